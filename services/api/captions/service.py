"""Captions of single short clips, synchronously: one caption stage for the whole app, set up once in the
background when the app starts (``ready`` says when), used by at most ``caption_concurrency`` requests at
once (1 with the in-process vLLM engine, which is not re-entrant; the HTTP engine takes more)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import Histogram

from dataengine.config import ConfigError
from dataengine.records import Failure, Source
from dataengine.stages import ProbeStage
from dataengine.stages.caption import CaptionStage
from pipelines.captioning import caption_video, with_engine
from pipelines.recipes import RecipeConfig, get_recipe
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
        self.recipe: RecipeConfig = recipe
        self.max_s = settings.max_caption_s
        self.stage = CaptionStage(recipe.caption)
        in_process = recipe.caption.engine.kind != "openai"
        self._slots = threading.BoundedSemaphore(1 if in_process else settings.caption_concurrency)
        self.ready = threading.Event()
        self.error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._setup, name="caption-engine", daemon=True).start()

    def _setup(self) -> None:
        try:
            self.stage.setup()
        except (ConfigError, OSError, RuntimeError, ValueError) as exc:  # reported by /readyz
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("the caption engine failed to start: %s", self.error)
            return
        self.ready.set()

    def stop(self) -> None:
        if self.ready.is_set():
            self.stage.teardown()

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
        with self._slots:
            start = time.perf_counter()
            document = caption_video(path, self.recipe, stage=self.stage)
            LATENCY.observe(time.perf_counter() - start)
        return document
