"""The app factory: ``create_app(settings)`` builds everything in its lifespan, nothing at import.

dataengine serve --host 127.0.0.1 --port 8080 --recipe demo
DATAENGINE_API_KEYS=k1 DATAENGINE_ALLOWED_ROOTS=/data uvicorn --factory services.api.app:create_app
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlparse

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_fastapi_instrumentator import Instrumentator

from services.api.captions.router import router as captions_router
from services.api.captions.service import CaptionService
from services.api.db import Store
from services.api.jobs.router import router as jobs_router
from services.api.jobs.service import JobRunner, JobService
from services.api.limits import BodyLimit
from services.api.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the ``DATAENGINE_*`` environment)."""
    config = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config.check()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(config.db_url)
        runner, captions = JobRunner(store, config), CaptionService(config)
        app.state.settings, app.state.store = config, store
        app.state.jobs, app.state.captions = JobService(store, config), captions
        if config.run_jobs:
            runner.start()
        captions.start()
        try:
            yield
        finally:
            if config.run_jobs:
                runner.stop()
            await asyncio.to_thread(captions.stop)  # the HTTP engine runs its own event loop
            store.engine.dispose()

    app = FastAPI(
        title="dataengine", version="0.1.0", lifespan=lifespan,
        description="Caption requests and batch jobs: raw video -> dense captions -> latents -> shards.",
    )  # fmt: skip
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_mb * 2**20)
    app.include_router(captions_router)
    app.include_router(jobs_router)
    _health(app)
    Instrumentator(excluded_handlers=["/metrics"]).instrument(app).expose(app, include_in_schema=False)
    return app


def _health(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "a dependency is not ready"}})
    def readyz() -> JSONResponse:
        """Ready when the database answers, the caption engine is loaded and Ray (if set) is reachable."""
        checks = {"database": _database(app), "caption_engine": _engine(app), "ray": _ray(app.state.settings)}
        ready = all(v == "ok" or v.startswith("ok") for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


def _database(app: FastAPI) -> str:
    store: Store = app.state.store
    try:
        store.ping()
    except Exception as exc:  # noqa: BLE001  # any database error means "not ready"; the reason is reported
        return f"error: {type(exc).__name__}"
    return "ok"


def _engine(app: FastAPI) -> str:
    captions: CaptionService = app.state.captions
    if not captions.ready.is_set():
        return f"error: {captions.error}" if captions.error else "starting"
    return captions.reachable()


def _ray(settings: Settings) -> str:
    if not settings.ray_address:
        return "ok (a local Ray instance per job)"
    parsed = urlparse(
        settings.ray_address if "://" in settings.ray_address else f"ray://{settings.ray_address}"
    )
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=2):
            return "ok"
    except OSError as exc:
        return f"error: {exc}"
