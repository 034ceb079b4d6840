"""Alembic's environment: run by ``services.api.db`` (``Store``, ``dataengine db ...``) on the connection it
passes in ``config.attributes``; the models of ``services.api.db`` are what autogenerate compares against."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from services.api.db import Base, UTCDateTime


def render_item(kind: str, obj: Any, autogen: AutogenContext) -> str | Literal[False]:
    """Our column types as plain SQLAlchemy ones, so a revision never imports the models it migrates."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through services.api.db (Store, dataengine db upgrade), not alembic")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_item=render_item,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
)
with context.begin_transaction():
    context.run_migrations()
