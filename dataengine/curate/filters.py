"""The filters' configuration: one typed bound per score, the text detector, embedder and learned scorers.

``FiltersConfig`` is the recipe's ``filters`` section; ``dataengine.stages.filter.FilterStage`` runs it
between decode and caption. A ``Bound`` is measured when ``enabled`` and drops a clip outside [min, max]
unless ``score_only``; score names and units are ``dataengine.curate.scores.SCORES``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from dataengine.config import Config
from dataengine.curate.embed import EmbedConfig
from dataengine.curate.learned import AestheticConfig, CaptionMatchConfig
from dataengine.curate.ocr import OCRConfig
from dataengine.curate.scores import SCORES


class Bound(Config):
    """One score's check: measured when ``enabled``; outside [min, max] it drops the clip, unless
    ``score_only``."""

    enabled: bool = Field(True, description="measure this score (False: the column stays null)")
    min: float | None = Field(None, description="drop when the score is below this")
    max: float | None = Field(None, description="drop when the score is above this")
    score_only: bool = Field(False, description="measure and record, never drop")

    def broken(self, value: float) -> tuple[str, float] | None:
        """``("<" | ">", threshold)`` when ``value`` is outside the bounds (NaN never is)."""
        if self.score_only or math.isnan(value):
            return None
        if self.min is not None and value < self.min:
            return "<", self.min
        if self.max is not None and value > self.max:
            return ">", self.max
        return None


def _only(**kw: Any) -> Any:
    return Field(default_factory=lambda: Bound(**kw))


class FiltersConfig(Config):
    """The checks between decode and caption. Defaults: generic footage; recipes tune them."""

    enabled: bool = Field(True, description="False: no scores, no drops, no fingerprints (dedup needs them)")
    view: str = Field("caption", description="the decoded view the filters look at")
    phash_frames: int = Field(4, ge=1, le=16, description="frames hashed for the near-duplicate index")
    duration_s: Bound = _only(min=0.5)
    short_side: Bound = _only(min=64)
    aspect: Bound = _only(min=0.25, max=4.0)
    motion: Bound = _only(min=0.005)
    motion_patch_min: Bound = _only(score_only=True)
    frame_diff: Bound = _only(score_only=True)
    frozen: Bound = _only(max=0.5)
    black: Bound = _only(max=0.5)
    blank: Bound = _only(max=0.5)
    fade: Bound = _only(max=0.7)
    flash: Bound = _only(max=0.25)
    luma: Bound = _only(score_only=True)
    sharpness: Bound = _only(score_only=True)
    edge_sharpness: Bound = _only(min=0.06)
    active_area: Bound = _only(min=0.7)
    text_area: Bound = _only(max=0.05)
    text_frames: Bound = _only(score_only=True)
    ocr: OCRConfig = Field(default_factory=OCRConfig, description="the text detector behind text_area")
    embed: EmbedConfig | None = Field(
        default_factory=EmbedConfig, description="clip embeddings (clip_emb.npy); None: none stored"
    )
    aesthetic: AestheticConfig | None = Field(None, description="a learned aesthetic scorer (GPU recipes)")
    caption_match: CaptionMatchConfig | None = Field(
        None, description="caption-to-clip match, scored after captioning in the encode workers (GPU recipes)"
    )

    @model_validator(mode="after")
    def _bounds_make_sense(self) -> FiltersConfig:
        for name in SCORES:
            bound = getattr(self, name, None)
            if isinstance(bound, Bound) and None not in (bound.min, bound.max) and bound.min > bound.max:  # type: ignore[operator]
                raise ValueError(f"filters.{name}: min {bound.min} > max {bound.max}")
        return self

    def bound(self, name: str) -> Bound | None:
        """The check of score ``name`` (``aesthetic`` is the scorer's ``min_score``); None: not configured."""
        if name in ("aesthetic", "caption_match"):
            plugin = self.aesthetic if name == "aesthetic" else self.caption_match
            return None if plugin is None else Bound(min=plugin.min_score)
        found = getattr(self, name, None)
        return found if isinstance(found, Bound) else None

    @property
    def learned(self) -> bool:
        """Whether the filters have model towers (a CLIP/SigLIP embedder, the aesthetic scorer): they run in
        the caption worker, where the GPU is (``dataengine.stages.filter.LearnedStage``)."""
        towers = self.aesthetic is not None or (self.embed is not None and self.embed.kind != "descriptor")
        return self.enabled and towers

    def thresholds(self) -> dict[str, dict[str, float | None]]:
        """Every active bound, for summaries: name -> {"min": ..., "max": ...}."""
        out: dict[str, dict[str, float | None]] = {}
        for name in SCORES:
            bound = self.bound(name)
            if bound is not None and bound.enabled and not bound.score_only:
                out[name] = {"min": bound.min, "max": bound.max}
        return out
