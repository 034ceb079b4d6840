"""/v1/jobs: submit (202), list (paged), status, results (paged), cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status

from services.api.db import Job
from services.api.deps import require_key
from services.api.jobs.schemas import JobCreate, JobCreated, JobList, JobOut, ResultList, ResultRow
from services.api.jobs.service import JobError, JobService


async def job_service(request: Request) -> JobService:
    """The job service the lifespan built."""
    value: JobService = request.app.state.jobs
    return value


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


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except JobError as exc:
        raise HTTPException(exc.status, str(exc)) from None


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated, responses=ERRORS)
def submit(body: JobCreate, service: Service) -> JobCreated:
    """Queue a batch job: the same runner as `dataengine run`, writing shards and a manifest."""
    job = _call(service.submit, body)
    return JobCreated(id=job.id, status=job.status)


@router.get("", response_model=JobList, responses=ERRORS)
def list_jobs(service: Service, offset: Offset = 0, limit: Limit = 50) -> JobList:
    total, jobs = service.page(offset, limit)
    return JobList(total=total, offset=offset, limit=limit, items=[_out(j) for j in jobs])


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS)
def get_job(job_id: str, service: Service) -> JobOut:
    return _out(_call(service.get, job_id))


@router.get("/{job_id}/results", response_model=ResultList, responses=ERRORS)
def results(job_id: str, service: Service, offset: Offset = 0, limit: Limit = 100) -> ResultList:
    """Manifest rows of the job so far: one per clip, with its caption and shard, failures included."""
    total, rows = _call(service.results, job_id, offset, limit)
    items = [ResultRow.model_validate(r) for r in rows]
    return ResultList(total=total, offset=offset, limit=limit, items=items)


@router.delete("/{job_id}", response_model=JobOut, responses={**ERRORS, 409: {"description": "already over"}})
def cancel(job_id: str, service: Service) -> JobOut:
    return _out(_call(service.cancel, job_id))
