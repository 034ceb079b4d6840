"""Jobs: validated and stored by ``JobService`` in the request, run by ``JobRunner`` in the background.

A job is ``dataengine run`` in its own process group (the same runner as the CLI) writing to
``DATA_DIR/jobs/<id>``, with the client's overrides (tuning knobs only: ``overrides.py``), then the allowed
roots and schemes (``paths.confinement``), which hold every file the run expands its inputs to. Its progress
comes from the run's ``progress.json``. When the API restarts, jobs that were running are stopped if their
process survived and queued again: the run resumes exactly once. When the database goes away (a restart, a
failover), the runner keeps its processes and retries each poll; their ends are recorded once it is back.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import func, insert, select
from sqlalchemy.exc import DBAPIError

from dataengine.config import ConfigError, apply_overrides
from pipelines.recipes import get_recipe
from services.api.db import JOB_STATES, Job, Store, now
from services.api.jobs.results import result_lines, result_page
from services.api.jobs.schemas import JobCreate
from services.api.overrides import refused
from services.api.paths import RejectedError, confine, confinement
from services.api.settings import Settings

log = logging.getLogger(__name__)
JOB_TABLE = Job.__table__
JOB_COLUMNS = tuple(JOB_TABLE.columns)
CLIPS = Counter("dataengine_clips_processed_total", "clips written to shards by jobs")
JOBS = Gauge("dataengine_jobs", "jobs by state", ["state"])


class JobError(Exception):
    """A request the job service refuses: ``status`` is the HTTP code, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class JobService:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings = store, settings
        self.inline = store.engine.dialect.name == "sqlite"  # fast enough to call on the event loop

    def submit(self, body: JobCreate) -> Job:
        inputs = self._inputs(body.inputs)
        self._check_recipe(body)
        job_id = uuid.uuid4().hex
        job = Job(
            id=job_id, status="queued", recipe=body.recipe, inputs=inputs, overrides=body.overrides,
            out_dir=str(self.settings.data_dir / "jobs" / job_id), progress={}, attempts=0,
            cancel_requested=False, created_at=now(),
        )  # fmt: skip
        with self.store.session() as session:  # a bulk INSERT: no unit of work for one new row
            session.execute(insert(Job), [{c.key: getattr(job, c.key) for c in JOB_COLUMNS}])
        return job

    def _inputs(self, specs: list[str]) -> list[str]:
        try:
            return [confine(s, self.settings.roots, self.settings.schemes) for s in specs]
        except RejectedError as exc:
            raise JobError(403, f"input refused: {exc}") from None

    def _check_recipe(self, body: JobCreate) -> None:
        patterns = self.settings.override_patterns
        if bad := refused(body.overrides, patterns):
            raise JobError(
                422,
                f"overrides of {bad} are not allowed; clients may override these keys and what lies under "
                f"them (* is any one key): {', '.join(patterns)}",
            )
        if problem := _recipe_problem(body.recipe, json.dumps(body.overrides, sort_keys=True)):
            raise JobError(422, problem)

    def get(self, job_id: str) -> Job:
        """The job (a detached copy); one SELECT on a connection of its own, outside the write lock."""
        with self.store.engine.connect() as conn:
            row = conn.execute(select(JOB_TABLE).where(JOB_TABLE.c.id == job_id)).mappings().first()
        if row is None:
            raise JobError(404, f"no job {job_id}")
        return Job(**row)

    def page(self, offset: int, limit: int) -> tuple[int, list[Job]]:
        with self.store.session() as session:
            total = session.scalar(select(func.count()).select_from(Job)) or 0
            query = select(Job).order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit)
            return total, list(session.scalars(query))

    def cancel(self, job_id: str) -> Job:
        with self.store.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobError(404, f"no job {job_id}")
            if job.status in ("succeeded", "failed", "cancelled"):
                raise JobError(409, f"job {job_id} already {job.status}")
            if job.status == "queued":
                job.status, job.finished_at = "cancelled", now()
            else:
                job.cancel_requested = True  # the runner stops the process
            return job

    def results(self, job_id: str, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """The job's manifest rows ``offset`` to ``offset + limit``, and how many it has."""
        return result_page(Path(self.get(job_id).out_dir), offset, limit)

    def result_lines(self, job_id: str) -> Iterator[bytes]:
        """The job's manifest rows as NDJSON, streamed part by part (raises JobError 404 first)."""
        return result_lines(Path(self.get(job_id).out_dir))


@lru_cache(maxsize=1024)
def _recipe_problem(recipe: str, overrides: str) -> str | None:
    """Why ``recipe`` with ``overrides`` (JSON) is not a valid recipe, or None; cached: clients repeat
    themselves, and validating a whole recipe costs more than storing the job."""
    try:
        apply_overrides(get_recipe(recipe), override_args(json.loads(overrides)))
    except ConfigError as exc:
        return str(exc)
    return None


def override_args(overrides: dict[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]


class JobRunner:
    """Starts queued jobs (at most ``max_running_jobs`` at once), follows them, stops cancelled ones."""

    def __init__(self, store: Store, settings: Settings, poll_s: float = 0.5) -> None:
        self.store, self.settings, self.poll_s = store, settings, poll_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._written: dict[str, int] = {}
        self._seen: dict[str, int] = {}  # mtime of each running job's progress.json when last read
        self._cancelled: set[str] = set()  # stopped on request, the end not yet recorded
        self._outage: float | None = None  # when the database stopped answering (monotonic); None: it answers
        self._warned = 0.0  # when the last warning about it went out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def start(self) -> None:
        self.recover()
        self._thread.start()

    def stop(self) -> None:
        """Stop following jobs; runs still going are stopped and queued again (they resume on restart)."""
        self._stop.set()
        self._thread.join(timeout=10)
        for job_id, proc in self._procs.items():
            _kill_group(proc.pid)
            try:
                self._update(
                    job_id, status="queued", pid=None, error="the API stopped; the job resumes when it starts"
                )
            except DBAPIError as exc:  # the next API's recover() finds it running and queues it
                log.warning("job %s stopped, but the database did not record it: %s", job_id, _line(exc))

    def recover(self) -> None:
        """Jobs left running by an API that died: stop their process if it lives on, queue them again."""
        with self.store.session() as session:
            for job in session.scalars(select(Job).where(Job.status == "running")):
                if job.pid:
                    _kill_group(job.pid)
                job.status, job.pid = "queued", None
                job.error = "interrupted by an API restart; resumed"

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
                self._start_queued()
                self._count()
            except DBAPIError as exc:  # the processes go on; what they did is recorded when it is back
                self._database_down(exc)
            else:
                if self._outage is not None:
                    log.warning("job runner: the database answers again (%.0f s away)", self._away())
                    self._outage = None
            self._stop.wait(self.poll_s)

    def _database_down(self, exc: DBAPIError) -> None:
        """One warning line when the database stops answering, then one a minute while it stays away."""
        if self._outage is None:
            self._outage = self._warned = time.monotonic()
            log.warning(
                "job runner: database unreachable, retrying every %s s; %d running job(s) go on: %s",
                self.poll_s, len(self._procs), _line(exc),
            )  # fmt: skip
        elif time.monotonic() - self._warned >= 60:
            self._warned = time.monotonic()
            log.warning("job runner: database still unreachable after %.0f s: %s", self._away(), _line(exc))

    def _away(self) -> float:
        return time.monotonic() - (self._outage or time.monotonic())

    def _count(self) -> None:
        with self.store.session() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
            counts = {status: count for status, count in rows}
        for state in JOB_STATES:
            JOBS.labels(state).set(counts.get(state, 0))

    def _start_queued(self) -> None:
        while len(self._procs) < self.settings.max_running_jobs:
            with self.store.session() as session:
                job = session.scalars(  # one whose start was not recorded (the database went away) is ours
                    select(Job)
                    .where(Job.status == "queued", Job.id.not_in(self._procs))
                    .order_by(Job.created_at)
                ).first()
                if job is None:
                    return
                if bad := refused(job.overrides, self.settings.override_patterns):  # queued under older rules
                    job.status, job.finished_at = "failed", now()
                    job.error = f"overrides of {bad} are no longer allowed; submit the job again without them"
                    continue
                proc = self._launch(job)
                job.status, job.pid, job.attempts = "running", proc.pid, job.attempts + 1
                job.started_at = job.started_at or now()
                self._procs[job.id] = proc

    def _launch(self, job: Job) -> subprocess.Popen[bytes]:
        out = Path(job.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "cli",
            "run",
            *job.inputs,
            "--out",
            str(out),
            "--recipe",
            job.recipe,
        ]
        confined = confinement(self.settings.roots, self.settings.schemes)  # last: no override undoes it
        cmd += [arg for o in [*override_args(job.overrides), *confined] for arg in ("--set", o)]
        if self.settings.ray_address:
            cmd += ["--address", self.settings.ray_address]
        with (out / "job.log").open("ab") as log_file:
            return subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def _follow(self) -> None:
        for job_id, proc in list(self._procs.items()):
            job = self._progress(job_id)
            if job.status == "queued":  # launched, but the database went away before it recorded that
                job = self._update(
                    job_id, status="running", pid=proc.pid, attempts=job.attempts + 1, started_at=now()
                )
            cancel = job.cancel_requested or job.status == "cancelled"
            if job_id in self._cancelled or (cancel and proc.poll() is None):
                if proc.poll() is None:
                    _kill_group(proc.pid)
                    proc.wait()
                self._cancelled.add(job_id)  # if recording the end fails, it is still a cancel next time
                self._finish(job_id, "cancelled", None)
            elif proc.poll() is not None:
                error = None if proc.returncode == 0 else _log_tail(Path(job.out_dir) / "job.log")
                self._finish(job_id, "succeeded" if proc.returncode == 0 else "failed", error)

    def _progress(self, job_id: str) -> Job:
        job = self.store_get(job_id)
        path = Path(job.out_dir) / "progress.json"
        seen = path.stat().st_mtime_ns if path.exists() else None
        if seen is not None and seen != self._seen.get(job_id):  # the run rewrites it at most once a second
            self._seen[job_id] = seen
            progress = json.loads(path.read_text())
            written = int(progress.get("samples_written", 0))
            CLIPS.inc(max(0, written - self._written.get(job_id, 0)))
            self._written[job_id] = written
            job = self._update(job_id, progress=progress)
        return job

    def _finish(self, job_id: str, status: str, error: str | None) -> None:
        """Record the end, then forget the process: while the database is away it stays followed."""
        self._update(job_id, status=status, error=error, pid=None, finished_at=now())
        self._procs.pop(job_id, None)
        self._written.pop(job_id, None)
        self._seen.pop(job_id, None)
        self._cancelled.discard(job_id)

    def store_get(self, job_id: str) -> Job:
        with self.store.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def _update(self, job_id: str, **fields: Any) -> Job:
        with self.store.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            for key, value in fields.items():
                setattr(job, key, value)
            return job


def _kill_group(pid: int) -> None:
    """SIGTERM the process group of ``pid`` (a run and its Ray workers), SIGKILL what is left after 10 s."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        threading.Event().wait(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _line(exc: DBAPIError) -> str:
    """The first line of the driver's message (``str(exc)`` adds the SQL and a link)."""
    return (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]


def _log_tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-2000:] or "the run exited with an error"
