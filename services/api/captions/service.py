"""Captions of single short clips: probed and decoded in the request's worker thread, then captioned by a
``Batcher`` that gathers concurrent requests into one engine call. The stages are set up once in the
background when the app starts (``ready`` says when): one with the in-process vLLM engine (it batches
inside), or ``caption_concurrency`` with the HTTP engine (each owns its client and event loop, and sends its
batch's requests concurrently)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

import httpx
from prometheus_client import Histogram

from dataengine.config import ConfigError, apply_overrides
from dataengine.stages.caption import CaptionStage
from pipelines.captioning import Prepared, caption_document, prepare_video, with_engine
from pipelines.recipes import RecipeConfig, get_recipe
from services.api.captions.batcher import Batcher, Result
from services.api.paths import confinement
from services.api.settings import Settings

log = logging.getLogger(__name__)
LATENCY = Histogram(
    "dataengine_caption_seconds", "time to caption one /v1/captions clip",
    buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
)  # fmt: skip


class EngineNotReadyError(RuntimeError):
    """The caption engine is starting (``failed`` False) or failed to start; the message says which."""

    def __init__(self, message: str, failed: bool) -> None:
        super().__init__(message)
        self.failed = failed


class CaptionService:
    def __init__(self, settings: Settings) -> None:
        recipe = get_recipe(settings.recipe)
        if settings.caption_base_url:
            recipe = with_engine(recipe, "openai", settings.caption_base_url)
            if settings.caption_model:
                engine = recipe.caption.engine.model_copy(update={"model": settings.caption_model})
                recipe = recipe.model_copy(
                    update={"caption": recipe.caption.model_copy(update={"engine": engine})}
                )
        # Probing checks the roots again and opens the resolved path, whatever a symlink became since.
        self.recipe: RecipeConfig = apply_overrides(recipe, confinement(settings.roots, settings.schemes))
        self.max_s = settings.max_caption_s
        self.base_url = settings.caption_base_url
        size = settings.caption_concurrency if recipe.caption.engine.kind == "openai" else 1
        self.timeout_s = settings.caption_timeout_s
        stages = [CaptionStage(recipe.caption) for _ in range(size)]
        self.batcher = Batcher(
            stages, settings.caption_max_batch, settings.caption_gather_ms / 1000, settings.caption_queue
        )
        self.ready = threading.Event()
        self.error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._setup, name="caption-engine", daemon=True).start()

    def _setup(self) -> None:
        try:
            for stage in self.batcher.stages:
                stage.setup()
        except (ConfigError, OSError, RuntimeError, ValueError) as exc:  # reported by /readyz
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("the caption engine failed to start: %s", self.error)
            return
        self.batcher.start()
        self.ready.set()

    def stop(self) -> None:
        if self.ready.is_set():
            self.batcher.stop()
            for stage in self.batcher.stages:
                stage.teardown()

    def reachable(self) -> str:
        """ "ok", or why the caption endpoint (HTTP engine) does not answer."""
        if not self.base_url:
            return "ok"
        try:
            httpx.get(f"{self.base_url.rstrip('/')}/models", timeout=2).raise_for_status()
        except httpx.HTTPError as exc:
            return f"error: {self.base_url} does not answer ({type(exc).__name__})"
        return "ok"

    def check_ready(self) -> None:
        """Raises EngineNotReadyError unless the engine takes captions now."""
        if not self.ready.is_set():
            if self.error:
                raise EngineNotReadyError(f"the caption engine failed to start: {self.error}", failed=True)
            raise EngineNotReadyError("the caption engine is starting; see /readyz", failed=False)

    def prepare(self, path: str) -> Prepared:
        """Probe and decode the clip at ``path`` (blocking: call it from a worker thread).

        Raises:
            TooLongError: the clip is longer than ``max_caption_s``.
        """
        return prepare_video(path, self.recipe, max_duration_s=self.max_s)

    def submit(self, prepared: Prepared) -> Future[Result]:
        """The caption of a prepared clip, batched with others (raises QueueFullError when full)."""
        assert prepared.decoded is not None
        prepared.timings["queued_at"] = time.perf_counter()
        return self.batcher.submit(prepared.decoded)

    def document(self, prepared: Prepared, result: Result) -> dict[str, Any]:
        """The caption document of ``result``; its ``caption_s`` counts the wait for a batch too."""
        caption_s = time.perf_counter() - prepared.timings.pop("queued_at")
        LATENCY.observe(time.perf_counter() - prepared.started)
        return caption_document(prepared, result, caption_s)
