"""Settings of the API, from the environment (prefix ``DATAENGINE_``), read once when the app is built."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import get_args

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dataengine.config import ConfigError
from dataengine.inputs import Scheme
from services.api.overrides import SAFE_OVERRIDES, is_pattern


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DATAENGINE_", extra="ignore", frozen=True)

    api_keys: str = Field("", description="comma-separated API keys; every /v1 request needs one")
    allowed_roots: str = Field(
        "", description="comma-separated folders that job inputs and outputs must be in"
    )
    data_dir: Path = Field(
        Path("out/api"), description="job outputs, uploads and the default SQLite database"
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///DATA_DIR/jobs.db")
    max_upload_mb: int = Field(256, ge=1, le=4096)
    ray_address: str | None = Field(
        None, description="Ray cluster for jobs; default: a local instance per job"
    )
    recipe: str = Field("demo", description="recipe of /v1/captions and the default of jobs")
    caption_base_url: str | None = Field(
        None,
        description="an OpenAI-compatible caption endpoint (a vLLM server) instead of the in-process engine",
    )
    caption_model: str | None = Field(None, description="the model name the caption endpoint serves")
    caption_concurrency: int = Field(
        2, ge=1, description="HTTP engine only: batches in flight at once (the in-process engine runs one)"
    )
    caption_max_batch: int = Field(16, ge=1, description="/v1/captions clips gathered into one engine call")
    caption_gather_ms: float = Field(
        10.0, ge=0, le=1000, description="how long a batch waits after its first clip for more"
    )
    caption_queue: int = Field(
        64, ge=1, description="/v1/captions clips that may wait for the engine; more get 429 + Retry-After"
    )
    caption_timeout_s: float = Field(
        300.0, gt=0, description="a /v1/captions request not answered in this time gets 504 and is dropped"
    )
    max_caption_s: float = Field(60.0, gt=0, description="/v1/captions takes clips up to this long")
    max_running_jobs: int = Field(1, ge=1)
    run_jobs: bool = Field(True, description="False: this instance only queues jobs and serves their status")
    uri_schemes: str = Field(
        "file,s3,http,https",
        description="schemes job inputs, their list entries and caption URIs may use (file: local paths)",
    )
    extra_overrides: str = Field(
        "",
        description="comma-separated recipe keys clients may override besides the tuning knobs of "
        "services/api/jobs/overrides.py, e.g. pools.*.max_workers; inputs, probe and runner stay refused",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @cached_property
    def keys(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @cached_property
    def roots(self) -> list[Path]:
        return [Path(r).expanduser().resolve() for r in self.allowed_roots.split(",") if r.strip()]

    @cached_property
    def schemes(self) -> set[str]:
        return {s.strip().lower() for s in self.uri_schemes.split(",") if s.strip()}

    @cached_property
    def override_patterns(self) -> tuple[str, ...]:
        return SAFE_OVERRIDES + tuple(k.strip() for k in self.extra_overrides.split(",") if k.strip())

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'jobs.db'}"

    def check(self) -> None:
        """ConfigError for settings the API cannot run safely with."""
        if not self.keys:
            raise ConfigError(
                "set DATAENGINE_API_KEYS (comma-separated): the API refuses to run without keys"
            )
        if not self.roots:
            raise ConfigError(
                "set DATAENGINE_ALLOWED_ROOTS (comma-separated folders): job inputs and outputs stay inside"
            )
        if not any(self.data_dir.is_relative_to(root) for root in self.roots):
            raise ConfigError(
                f"DATAENGINE_DATA_DIR {self.data_dir} (job outputs) must be inside an allowed root"
            )
        if unknown := sorted(self.schemes - set(get_args(Scheme))):
            raise ConfigError(
                f"DATAENGINE_URI_SCHEMES: unknown {unknown}; inputs may use {', '.join(get_args(Scheme))}"
            )
        if bad := [p for p in self.override_patterns if not is_pattern(p)]:
            raise ConfigError(
                f"DATAENGINE_EXTRA_OVERRIDES: {bad} are not dotted recipe keys outside inputs, probe, runner"
            )
