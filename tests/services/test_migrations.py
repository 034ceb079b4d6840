"""Alembic migrations of the job store on SQLite and a real PostgreSQL server: a new database, one made by the
``create_all`` that came before migrations, replicas migrating at once, ``dataengine db``, and the revisions
matching the models (what ``alembic check`` does)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, inspect, text
from typer.testing import CliRunner

import cli.db  # noqa: F401  (registers the db commands on the app)
from cli.app import app
from services.api.db import FIRST_REVISION, Base, Job, Store, alembic_config, current, head, now, upgrade
from tests.net import free_port
from tests.services.conftest import Postgres


@pytest.fixture(params=["sqlite", "postgres"])
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a database nothing has touched."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    server: Postgres = request.getfixturevalue("postgres")
    return server.create_database(f"m_{tmp_path.name.lower()}")


def versions(url: str) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = list(conn.scalars(text("SELECT version_num FROM alembic_version")))
    engine.dispose()
    return found


def test_a_new_database_is_migrated_to_head_and_matches_the_models(new_url: str) -> None:
    store = Store(new_url)
    assert versions(new_url) == [head()] and current(store.engine) == head()
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []  # the revisions make what the models describe
        indexes = {index["name"] for index in inspect(conn).get_indexes("jobs")}
    assert indexes == {"ix_jobs_status", "ix_jobs_created_at"}
    Store(new_url)  # a second start finds nothing to do
    assert versions(new_url) == [head()]
    store.engine.dispose()


def test_a_database_made_before_migrations_is_stamped_and_keeps_its_jobs(new_url: str) -> None:
    old = create_engine(new_url)
    Base.metadata.create_all(old)  # what Store did before there were migrations
    with old.begin() as conn:
        conn.execute(
            insert(Job),
            {"id": "old", "status": "succeeded", "recipe": "demo", "inputs": ["/v"], "overrides": {},
             "out_dir": "/o", "progress": {"samples_written": 3}, "attempts": 1, "cancel_requested": False,
             "created_at": now()},
        )  # fmt: skip
    old.dispose()
    store = Store(new_url)
    assert versions(new_url) == [head()]
    with store.session() as session:
        kept = session.get(Job, "old")
        assert kept is not None and kept.progress == {"samples_written": 3} and kept.status == "succeeded"
    store.engine.dispose()


def test_the_first_revision_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    with store.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert "jobs" not in inspect(store.engine).get_table_names() and current(store.engine) is None
    upgrade(store.engine, FIRST_REVISION)
    assert current(store.engine) == FIRST_REVISION
    store.engine.dispose()


def test_replicas_starting_together_migrate_one_after_the_other(postgres: Postgres) -> None:
    """Four stores on one new database at once (threads: without the advisory lock they collide)."""
    url = postgres.create_database("replicas")
    start, errors, stores = threading.Barrier(4), [], []

    def replica() -> None:
        start.wait()
        try:
            stores.append(Store(url))
        except Exception as exc:  # noqa: BLE001  (the assertion below shows it)
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert errors == [] and len(stores) == 4
    assert versions(url) == [head()]
    for store in stores:
        store.engine.dispose()


def test_dataengine_db_upgrades_and_prints_the_revision(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.create_database("cli")
    env = {"DATAENGINE_DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "db", "upgrade"], env={**os.environ, **env}, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"database at revision {head()}" in done.stderr
    printed = CliRunner().invoke(app, ["db", "current"], env=env)
    assert printed.exit_code == 0 and printed.stdout.splitlines()[0] == head(), printed.output
    sqlite = {"DATAENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}"}
    unchanged = CliRunner().invoke(app, ["db", "revision", "-m", "nothing"], env=sqlite)
    assert unchanged.exit_code == 0 and "nothing to write" in unchanged.output, unchanged.output
    unreachable = {"DATAENGINE_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"}
    refused = CliRunner().invoke(app, ["db", "upgrade"], env=unreachable)
    assert refused.exit_code == 3 and "database unreachable" in refused.output, refused.output
