"""Request and response bodies of /v1/jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(
        min_length=1, max_length=10_000, description="files, folders, globs, lists, URIs"
    )
    recipe: str = Field("demo", max_length=64)
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description='tuning knobs of the recipe, e.g. {"shards.max_samples": 100}; a key outside the allowed '
        "list (services/api/jobs/overrides.py and DATAENGINE_EXTRA_OVERRIDES) is a 422",
    )


class JobOut(BaseModel):
    id: str
    status: JobStatus
    recipe: str
    inputs: list[str]
    overrides: dict[str, Any]
    progress: dict[str, Any]
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobCreated(BaseModel):
    id: str
    status: JobStatus


class Page(BaseModel):
    total: int
    offset: int
    limit: int


class JobList(Page):
    items: list[JobOut]


class ResultRow(BaseModel):
    clip_id: str | None
    source: str | None
    start_s: float | None
    end_s: float | None
    status: str
    stage: str | None
    error: str | None
    caption: str | None
    short_caption: str | None
    shard: str | None
    caption_mean_logprob: float | None = Field(None, description="the caption gate's confidence numbers")
    caption_min_window_logprob: float | None = None
    caption_compression_ratio: float | None = None
    caption_redraw_psnr: float | None = None


class ResultList(Page):
    items: list[ResultRow]
