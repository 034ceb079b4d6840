"""The job store and job service on SQLite and on a real Postgres server (``conftest.py`` starts it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.api.db import Job, Store
from services.api.jobs.schemas import JobCreate
from services.api.jobs.service import JobError, JobRunner, JobService
from services.api.settings import Settings


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
