"""The job store and job service on SQLite and on a real Postgres server started for the test (when this
machine has one: Debian's postgresql package and its ``postgres`` user)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.api.db import Job, Store
from services.api.jobs.schemas import JobCreate
from services.api.jobs.service import JobError, JobRunner, JobService
from services.api.settings import Settings
from tests.net import free_port

INITDB = shutil.which("initdb") or "/usr/lib/postgresql/15/bin/initdb"


def _postgres_missing() -> str | None:
    if not Path(INITDB).exists():
        return "no PostgreSQL server on this machine (apt-get install postgresql)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser: PostgreSQL refuses to start as root"
    return None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    reason = _postgres_missing()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres")
    port = free_port()
    bin_dir = Path(INITDB).resolve().parent
    initdb = [*as_user, str(bin_dir / "initdb"), "-D", str(folder / "db"), "-A", "trust", "-U", "postgres"]
    subprocess.run(initdb, check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(folder / "db")]
    subprocess.run(
        [*ctl, "-o", options, "-l", str(folder / "log"), "-w", "start"], check=True, capture_output=True
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    url: str = request.getfixturevalue("postgres_url")
    store = Store(url)
    with store.session() as session:
        session.query(Job).delete()
    return store


def settings(root: Path) -> Settings:
    return Settings(api_keys="k", allowed_roots=str(root), data_dir=root / "data")


def test_jobs_are_stored_paged_cancelled_and_recovered(store: Store, tmp_path: Path) -> None:
    config = settings(tmp_path)
    service = JobService(store, config)
    store.ping()
    (tmp_path / "videos").mkdir()
    jobs = [service.submit(JobCreate(inputs=[str(tmp_path / "videos")])) for _ in range(3)]
    total, page = service.page(offset=1, limit=1)
    assert total == 3 and len(page) == 1
    assert service.get(jobs[0].id).inputs == [str(tmp_path / "videos")]
    assert service.get(jobs[0].id).created_at.utcoffset() is not None  # times keep their zone on SQLite too
    assert service.cancel(jobs[0].id).status == "cancelled"
    with pytest.raises(JobError) as refused:
        service.cancel(jobs[0].id)
    assert refused.value.status == 409

    with store.session() as session:  # what an API that died mid-job leaves behind
        running = session.get(Job, jobs[1].id)
        assert running is not None
        running.status, running.pid = "running", 2**22 + 12345  # a process group that does not exist
    JobRunner(store, config).recover()
    recovered = service.get(jobs[1].id)
    assert recovered.status == "queued" and recovered.pid is None and "restart" in (recovered.error or "")
    assert service.results(jobs[2].id, 0, 10) == (0, [])
