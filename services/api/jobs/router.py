"""/v1/jobs: submit (202), list (paged), status, results (paged, or streamed as NDJSON), cancel."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

from anyio import to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from services.api.db import Job
from services.api.deps import require_key
from services.api.jobs.schemas import JobCreate, JobCreated, JobList, JobOut, ResultList, ResultRow
from services.api.jobs.service import JobError, JobService


async def job_service(request: Request) -> JobService:
    """The job service the lifespan built."""
    value: JobService = request.app.state.jobs
    return value


T = TypeVar("T")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_key)])
Service = Annotated[JobService, Depends(job_service)]
Offset = Annotated[int, Query(ge=0, le=10**9)]
Limit = Annotated[int, Query(ge=1, le=1000)]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong API key"},
    403: {"description": "an input outside the allowed roots or with a scheme not allowed"},
    404: {"description": "no such job"},
}


def _out(job: Job) -> JobOut:
    return JobOut.model_validate(job, from_attributes=True)


async def _call(service: JobService, fn: Callable[..., T], *args: Any, files: bool = False) -> T:
    """``fn(*args)``, its JobError as the HTTP error it names.

    On PostgreSQL it runs in a worker thread (a network round trip must not hold the event loop). On SQLite
    it runs here, on the event loop: a local SQLite call takes a fraction of a millisecond, while a thread
    per call waits for the GIL at every handoff (the loop holds it), which made the jobs routes 20 times
    slower than their work (bench/api.py). The routes are ``async`` for the same reason: a sync route also
    hops to a thread for each dependency and for response validation. ``files``: ``fn`` reads a run's
    files too, so it always runs in a thread.
    """
    try:
        if service.inline and not files:
            return fn(*args)
        return await to_thread.run_sync(partial(fn, *args))
    except JobError as exc:
        raise HTTPException(exc.status, str(exc)) from None


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated, responses=ERRORS)
async def submit(body: JobCreate, service: Service) -> JobCreated:
    """Queue a batch job: the same runner as `dataengine run`, writing shards and a manifest."""
    job = await _call(service, service.submit, body)
    return JobCreated(id=job.id, status=job.status)


@router.get("", response_model=JobList, responses=ERRORS)
async def list_jobs(service: Service, offset: Offset = 0, limit: Limit = 50) -> JobList:
    total, jobs = await _call(service, service.page, offset, limit)
    return JobList(total=total, offset=offset, limit=limit, items=[_out(j) for j in jobs])


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS)
async def get_job(job_id: str, service: Service) -> JobOut:
    return _out(await _call(service, service.get, job_id))


@router.get("/{job_id}/results", response_model=ResultList, responses=ERRORS)
async def results(job_id: str, service: Service, offset: Offset = 0, limit: Limit = 100) -> ResultList:
    """Manifest rows of the job so far: one per clip, with its caption and shard, failures included."""
    total, rows = await _call(service, service.results, job_id, offset, limit, files=True)
    items = [ResultRow.model_validate(r) for r in rows]
    return ResultList(total=total, offset=offset, limit=limit, items=items)


@router.get(
    "/{job_id}/results.ndjson",
    response_class=StreamingResponse,
    responses={
        **ERRORS,
        200: {
            "description": "one JSON object per line, each a ResultRow; streamed, never built in memory",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
    },
)
async def result_stream(job_id: str, service: Service) -> StreamingResponse:
    """Every manifest row of the job so far, as newline-delimited JSON (the rows of `/results`, unpaged)."""
    lines = await _call(service, service.result_lines, job_id)
    return StreamingResponse(lines, media_type="application/x-ndjson")


@router.delete("/{job_id}", response_model=JobOut, responses={**ERRORS, 409: {"description": "already over"}})
async def cancel(job_id: str, service: Service) -> JobOut:
    return _out(await _call(service, service.cancel, job_id))
