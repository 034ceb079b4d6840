"""A real PostgreSQL server for the service tests: one per test session, in a temporary folder, free port.

``make setup`` installs it (Debian's ``postgresql``: initdb and pg_ctl in /usr/lib/postgresql/N/bin). A
machine without it fails these tests with that fix instead of skipping them: the job store runs on Postgres in
production, so a run that never tried Postgres must not pass. As root (CI containers) the server runs as the
``postgres`` user the package creates, through ``runuser``: PostgreSQL refuses to start as root.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.net import free_port

FIX = "run 'make setup': it installs postgresql (apt-get install postgresql)"


def find_initdb() -> Path | None:
    """initdb on PATH, else the newest /usr/lib/postgresql/<version>/bin/initdb (Debian keeps it off PATH)."""
    if found := shutil.which("initdb"):
        return Path(found).resolve()

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name))

    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    return installed[-1] if installed else None


@dataclass(frozen=True)
class Postgres:
    """A running server: ``url(database)`` for SQLAlchemy, ``create_database``, ``stop``/``start`` to test
    what an outage does (same folder, same port)."""

    folder: Path
    port: int
    bin_dir: Path
    as_user: tuple[str, ...]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def ctl(self, *args: str) -> None:
        command = [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "db"), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = (self.folder / "log").read_text(errors="replace")[-2000:]
            pytest.fail(f"pg_ctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self.ctl("-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.ctl("-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")  # CREATE DATABASE: no transaction
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    initdb = find_initdb()
    if initdb is None:
        pytest.fail(
            f"no PostgreSQL server on this machine (no initdb on PATH or in /usr/lib/postgresql): {FIX}"
        )
    as_user: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.fail("running as root without runuser: PostgreSQL refuses to start as root")
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(f"running as root and no postgres user to run the server as: {FIX}")
        as_user = ("runuser", "-u", "postgres", "--")
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    if as_user:
        shutil.chown(folder, "postgres")
    server = Postgres(folder=folder, port=free_port(), bin_dir=initdb.parent, as_user=as_user)
    command = [*as_user, str(initdb), "-D", str(folder / "db"), "-A", "trust", "-U", "postgres"]
    subprocess.run(command, check=True, capture_output=True)
    server.start()
    try:
        yield server
    finally:
        subprocess.run([*server.as_user, str(server.bin_dir / "pg_ctl"), "-D", str(folder / "db"), "-m",
                        "immediate", "stop"], check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres: Postgres) -> str:
    """The server's default database (tests that share it delete their rows first)."""
    return postgres.url()
