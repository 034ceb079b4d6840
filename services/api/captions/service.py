"""Captions of single short clips, synchronously, by a pool of caption stages set up once in the background
when the app starts (``ready`` says when): one stage with the in-process vLLM engine (not re-entrant),
``caption_concurrency`` stages with the HTTP engine (each owns its client and event loop). A request borrows
a stage; more requests wait for one."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import httpx
from prometheus_client import Histogram

from dataengine.config import ConfigError, apply_overrides
from dataengine.records import Failure, Source
from dataengine.stages import ProbeStage
from dataengine.stages.caption import CaptionStage
from pipelines.captioning import caption_video, with_engine
from pipelines.recipes import RecipeConfig, get_recipe
from services.api.paths import confinement
from services.api.settings import Settings

log = logging.getLogger(__name__)
LATENCY = Histogram(
    "dataengine_caption_seconds", "time to caption one /v1/captions clip",
    buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
)  # fmt: skip


class CaptionRefusedError(ValueError):
    """The clip cannot be captioned here (too long, not a video); the message says why."""


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
        self._stages = [CaptionStage(recipe.caption) for _ in range(size)]
        self._free: queue.Queue[CaptionStage] = queue.Queue()
        self.ready = threading.Event()
        self.error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._setup, name="caption-engine", daemon=True).start()

    def _setup(self) -> None:
        try:
            for stage in self._stages:
                stage.setup()
                self._free.put(stage)
        except (ConfigError, OSError, RuntimeError, ValueError) as exc:  # reported by /readyz
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("the caption engine failed to start: %s", self.error)
            return
        self.ready.set()

    def stop(self) -> None:
        if self.ready.is_set():
            for stage in self._stages:
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

    def caption(self, path: str) -> dict[str, Any]:
        """The caption document of the clip at ``path`` (blocking: call it from a worker thread)."""
        video = ProbeStage(self.recipe.probe).probe(Source.from_uri(path))
        if isinstance(video, Failure):
            return {"error": {"stage": video.stage, "reason": video.reason}}
        if video.probe.duration_s > self.max_s:
            raise CaptionRefusedError(
                f"the clip is {video.probe.duration_s:.1f} s; this endpoint takes up to {self.max_s:g} s"
            )
        if not self.ready.wait(timeout=600):
            raise CaptionRefusedError(f"the caption engine is not ready: {self.error or 'still starting'}")
        stage = self._free.get()
        try:
            start = time.perf_counter()
            document = caption_video(path, self.recipe, stage=stage)
            LATENCY.observe(time.perf_counter() - start)
        finally:
            self._free.put(stage)
        return document
