"""A database outage while a job runs: the runner keeps following the job's process and records its end once
the database is back, so no job stays ``running`` (a real PostgreSQL server, stopped and started again)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.api.db import Store
from services.api.jobs.schemas import JobCreate
from services.api.jobs.service import JobRunner, JobService
from services.api.settings import Settings
from tests.services.conftest import Postgres


def wait_for(what: Callable[[], bool], seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def exited(pid: int) -> bool:
    """The process has ended: a zombie (its parent, the runner, has not reaped it yet) or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_a_job_that_ends_while_the_database_is_down_is_recorded_when_it_is_back(
    postgres: Postgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(postgres.create_database("outage"))
    config = Settings(api_keys="k", allowed_roots=str(tmp_path), data_dir=tmp_path / "data")
    (tmp_path / "videos").mkdir()  # no videos: the run fails after its imports, with the reason in its log
    service = JobService(store, config)
    job = service.submit(JobCreate(inputs=[str(tmp_path / "videos")]))
    runner = JobRunner(store, config, poll_s=0.1)
    caplog.set_level(logging.WARNING, logger="services.api.jobs.service")
    runner.start()
    try:
        wait_for(lambda: service.get(job.id).status == "running", 30, "the job never started")
        pid = service.get(job.id).pid
        assert pid is not None and not exited(pid), "the run ended before the database went down"
        postgres.stop()
        stopped_at = datetime.now(UTC)
        try:
            wait_for(lambda: exited(pid), 120, "the run never ended")
            time.sleep(1)  # the runner polls the database a few more times, and fails
        finally:
            postgres.start()
        wait_for(
            lambda: service.get(job.id).status not in ("queued", "running"), 30, "the end was never recorded"
        )
    finally:
        runner.stop()
        store.engine.dispose()

    final = service.get(job.id)
    assert final.status in ("succeeded", "failed"), final.status
    assert final.status == "succeeded" or "matched no files" in " ".join((final.error or "").split())
    assert final.pid is None and final.finished_at is not None and final.finished_at > stopped_at
    warnings = [r.getMessage() for r in caplog.records if r.name == "services.api.jobs.service"]
    unreachable = [w for w in warnings if "database unreachable" in w]
    assert len(unreachable) == 1, warnings  # one line for the outage, not one per poll
    assert any("answers again" in w for w in warnings), warnings
