"""The job store through SQLAlchemy: SQLite (WAL) by default, Postgres through ``DATABASE_URL``.

The schema is Alembic's (``services/api/migrations``): ``Store`` upgrades the database to the newest revision
when it starts, ``dataengine db upgrade`` does the same for operators who migrate before the API starts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.operations.ops import MigrationScript
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
MIGRATIONS = Path(__file__).with_name("migrations")
FIRST_REVISION = "0001"  # the jobs table as create_all made it before there were migrations
MIGRATION_LOCK = 0x6A6F6273  # PostgreSQL advisory lock key ("jobs") held while a process migrates


def now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on every backend: SQLite keeps no offset, so UTC is put back on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    recipe: Mapped[str] = mapped_column(String(64))
    inputs: Mapped[list[str]] = mapped_column(JSON)
    overrides: Mapped[dict[str, Any]] = mapped_column(JSON)
    out_dir: Mapped[str] = mapped_column(Text)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the run's process group while running
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL (readers never wait for the job runner) and a busy timeout, a
    server gets connections tested before use (one dropped by a database restart is replaced, not handed out).
    The schema is not made here: ``upgrade`` does that."""
    is_sqlite = url.startswith("sqlite")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False} if is_sqlite else {},
        pool_pre_ping=not is_sqlite,
        future=True,
    )
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: a crash loses no committed job
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, made here instead of an alembic.ini: the migrations folder of this package,
    and the connection the migrations run on (``env.py`` takes it from ``attributes``)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")  # a module name mypy accepts
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision of the migrations."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None, f"no migrations in {MIGRATIONS}"
    return revision


def current(engine: Engine) -> str | None:
    """The revision the database is at; None for a database that has never been migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` in one transaction. On PostgreSQL an advisory lock is held
    meanwhile, so API replicas that start together migrate one after the other (the later ones find nothing
    to do). A database made by ``create_all`` before there were migrations (``jobs`` but no
    ``alembic_version``) is stamped at the first revision, whose table it already has, then upgraded."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config = alembic_config(conn)
        tables = inspect(conn).get_table_names()
        if "jobs" in tables and "alembic_version" not in tables:
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, revision)


def write_revision(engine: Engine, message: str) -> list[str]:
    """A new migration from what the models here have and the database (upgraded to head first) lacks, in
    ``migrations/versions``, numbered after the head; the paths written (none when nothing differs)."""

    def skip_empty(_: MigrationContext, __: Any, directives: list[MigrationScript]) -> None:
        if directives[0].upgrade_ops is not None and directives[0].upgrade_ops.is_empty():
            directives.clear()

    upgrade(engine)
    with engine.begin() as conn:
        written = command.revision(
            alembic_config(conn),
            message=message,
            autogenerate=True,
            rev_id=f"{int(head()) + 1:04d}",
            process_revision_directives=skip_empty,
        )
    scripts = written if isinstance(written, list) else [written]
    return [script.path for script in scripts if script is not None]


class Store:
    """Sessions on one engine."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer: threads queue here instead of sleeping in its busy handler (seconds of p99).
        self._write: AbstractContextManager[Any] = (
            threading.Lock() if url.startswith("sqlite") else nullcontext()
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._write, self._sessions() as session, session.begin():
            yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
