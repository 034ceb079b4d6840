"""Filter: decoded clips -> scored clips, or ``dropped`` rows that say which check dropped them and why.

DecodedClip --> DecodedClip (with ``curation``) | Failure(stage="filter", kind="dropped").

Runs in the decode worker right after the decode stage, on a view already in memory (``filters.view``,
the caption view by default): nothing is decoded twice. Every clip gets every enabled score (names and
units: ``dataengine.curate.scores``), its fingerprint for the runner's duplicate index (exact digest and
perceptual hashes) and, when an embedder is configured, its clip embedding. Then each bound is checked in
the order of ``SCORES``; the first one broken drops the clip, with the score and the threshold in the
reason, e.g. ``motion 0.0021 < 0.01 (filters.motion.min)``. A bound with ``score_only`` is measured and
never drops.

A check that raises on one clip makes that clip a ``failed`` row (stage ``filter``, the exception named)
and the batch goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field, model_validator

from dataengine.config import Config
from dataengine.curate import measure
from dataengine.curate.dedup import frames_digest, phash_frames
from dataengine.curate.embed import ClipEmbedder, EmbedConfig
from dataengine.curate.learned import AestheticConfig, AestheticScorer, CaptionMatchConfig
from dataengine.curate.ocr import OCRConfig, TextDetector
from dataengine.curate.scores import SCORES
from dataengine.records import Curation, DecodedClip, Failure, Fingerprint, Frames
from dataengine.stages.base import Stage

log = logging.getLogger(__name__)
Box = tuple[int, int, int, int] | None  # x0, y0, x1, y1 of the picture inside borders, in view pixels


class Bound(Config):
    """One score's check: measured when ``enabled``; outside [min, max] drops the clip, unless ``score_only``."""

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

    def thresholds(self) -> dict[str, dict[str, float | None]]:
        """Every active bound, for summaries: name -> {"min": ..., "max": ...}."""
        out: dict[str, dict[str, float | None]] = {}
        for name in SCORES:
            bound = self.bound(name)
            if bound is not None and bound.enabled and not bound.score_only:
                out[name] = {"min": bound.min, "max": bound.max}
        return out


# The model-free measurements: (scores they produce, how). Each runs when any of its scores is enabled.
_FAMILIES: tuple[tuple[tuple[str, ...], Callable[[Frames], dict[str, float]]], ...] = (
    (("motion", "motion_patch_min", "frame_diff"), measure.motion_scores),
    (("frozen",), measure.frozen_score),
    (("black", "blank", "fade", "flash", "luma"), measure.brightness_scores),
    (("sharpness", "edge_sharpness"), measure.sharpness_score),
)


class FilterStage(Stage[DecodedClip, DecodedClip]):
    name = "filter"
    input_type = DecodedClip
    output_type = DecodedClip
    config: FiltersConfig

    def __init__(self, config: FiltersConfig | None = None) -> None:
        super().__init__(config or FiltersConfig())
        self.text: TextDetector | None = None
        self.embedder: ClipEmbedder | None = None
        self.aesthetic: AestheticScorer | None = None

    def setup(self) -> None:
        if self._on("text_area") or self._on("text_frames"):
            self.text = TextDetector(self.config.ocr)
            self.text.setup()
        if self.config.embed is not None:
            self.embedder = ClipEmbedder(self.config.embed)
            self.embedder.setup()
        if self.config.aesthetic is not None:
            self.aesthetic = AestheticScorer(self.config.aesthetic)
            self.aesthetic.setup()

    def teardown(self) -> None:
        for part in (self.embedder, self.aesthetic):
            if part is not None:
                part.teardown()

    def _on(self, name: str) -> bool:
        bound = self.config.bound(name)
        return bound is not None and bound.enabled

    def process_batch(self, batch: Sequence[DecodedClip]) -> list[DecodedClip | Failure]:
        if not self.config.enabled:
            return list(batch)
        views = [self._view(d) for d in batch]
        measured = [self._scores(d, v) for d, v in zip(batch, views, strict=True)]
        ok = [i for i, m in enumerate(measured) if not isinstance(m, Failure)]
        clips = [views[i].frames_THWC for i in ok]
        embeddings = self.embedder.embed(clips) if self.embedder is not None and clips else [None] * len(ok)
        aesthetic = self.aesthetic.score(clips) if self.aesthetic is not None and clips else None
        out: list[DecodedClip | Failure] = []
        learned = iter(range(len(ok)))
        for decoded, view, result in zip(batch, views, measured, strict=True):
            if isinstance(result, Failure):
                out.append(result)
                continue
            j = next(learned)
            scores, box = result
            if aesthetic is not None:
                scores["aesthetic"] = float(aesthetic[j])
            out.append(self._verdict(decoded, view, scores, box, embeddings[j]))
        return out

    def _view(self, decoded: DecodedClip) -> Frames:
        try:
            return decoded.views[self.config.view]
        except KeyError:
            raise ValueError(
                f"filters.view={self.config.view!r} is not a decoded view (have {sorted(decoded.views)}); "
                "set filters.view to one of them"
            ) from None

    def _scores(self, decoded: DecodedClip, view: Frames) -> tuple[dict[str, float], Box] | Failure:
        """Every enabled model-free score of one clip and its picture's box, or the failure of the check
        that raised."""
        probe, clip = decoded.clip.probe, decoded.clip
        scores = {
            "duration_s": clip.duration_s,
            "short_side": float(min(probe.width, probe.height)),
            "aspect": probe.width / probe.height,
        }
        box: list[Box] = [None]

        def borders(frames: Frames) -> dict[str, float]:
            measured, box[0] = measure.border_scores(frames)
            return measured

        families = [*_FAMILIES, (("active_area",), borders)]
        if self.text is not None:
            families.append((("text_area", "text_frames"), self._text_scores))
        for names, compute in families:
            if not any(self._on(n) for n in names):
                continue
            try:
                measured = compute(view)
            except Exception as exc:  # per-clip fault boundary (module docstring)
                log.exception("the %s check raised on clip %s", names[0], clip.clip_id)
                reason = f"the {names[0]} check raised {type(exc).__name__}: {exc}"
                return Failure.of(clip, "filter", reason, scores=scores)
            scores.update({n: float(measured[n]) for n in names})
        return {n: v for n, v in scores.items() if self._on(n)}, box[0]

    def _text_scores(self, view: Frames) -> dict[str, float]:
        assert self.text is not None
        return measure.text_scores(view, self.text)

    def _verdict(
        self, decoded: DecodedClip, view: Frames, scores: dict[str, float], box: Box, embedding: Any
    ) -> DecodedClip | Failure:
        """The clip with its curation, or its ``dropped`` row naming the first bound it breaks."""
        for name in SCORES:
            value = scores.get(name, math.nan)
            bound = self.config.bound(name)
            broken = bound.broken(value) if bound is not None else None
            if broken is not None:
                side, threshold = broken
                key = "min" if side == "<" else "max"
                key = "min_score" if name == "aesthetic" else key
                reason = f"{name} {value:.4g} {side} {threshold:g} (filters.{name}.{key})"
                return Failure.of(decoded.clip, "filter", reason, kind="dropped", scores=scores)
        frames = view.frames_THWC
        fingerprint = Fingerprint(
            frames_digest(frames), phash_frames(frames, self.config.phash_frames), scores
        )
        return DecodedClip(decoded.clip, decoded.views, Curation(scores, fingerprint, embedding, box))
