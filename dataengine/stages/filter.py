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
from dataclasses import replace
from typing import Any

from dataengine.curate import measure
from dataengine.curate.embed import ClipEmbedder
from dataengine.curate.filters import FiltersConfig
from dataengine.curate.hashes import frames_digest, phash_frames
from dataengine.curate.learned import AestheticScorer
from dataengine.curate.ocr import TextDetector
from dataengine.curate.scores import SCORES
from dataengine.records import Curation, DecodedClip, Failure, Fingerprint, Frames
from dataengine.stages.base import Stage

log = logging.getLogger(__name__)
Box = tuple[int, int, int, int] | None  # x0, y0, x1, y1 of the picture inside borders, in view pixels

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

    def setup(self) -> None:
        if self._on("text_area") or self._on("text_frames"):
            self.text = TextDetector(self.config.ocr)
            self.text.setup()
        if self.config.embed is not None and self.config.embed.kind == "descriptor":  # towers: LearnedStage
            self.embedder = ClipEmbedder(self.config.embed)
            self.embedder.setup()

    def teardown(self) -> None:
        if self.embedder is not None:
            self.embedder.teardown()

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
        out: list[DecodedClip | Failure] = []
        kept = iter(embeddings)
        for decoded, view, result in zip(batch, views, measured, strict=True):
            if isinstance(result, Failure):
                out.append(result)
                continue
            scores, box = result
            out.append(self._verdict(decoded, view, scores, box, next(kept)))
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
        dropped = _first_broken(self.config, decoded, scores)
        if dropped is not None:
            return dropped
        frames = view.frames_THWC
        fingerprint = Fingerprint(
            frames_digest(frames), phash_frames(frames, self.config.phash_frames), scores
        )
        return DecodedClip(decoded.clip, decoded.views, Curation(scores, fingerprint, embedding, box))


def _first_broken(config: FiltersConfig, decoded: DecodedClip, scores: dict[str, float]) -> Failure | None:
    """The ``dropped`` row naming the first bound (in ``SCORES`` order) that ``scores`` break, else None."""
    for name in SCORES:
        value = scores.get(name, math.nan)
        bound = config.bound(name)
        broken = bound.broken(value) if bound is not None else None
        if broken is not None:
            side, threshold = broken
            key = "min_score" if name in ("aesthetic", "caption_match") else "min" if side == "<" else "max"
            reason = f"{name} {value:.4g} {side} {threshold:g} (filters.{name}.{key})"
            return Failure.of(decoded.clip, "filter", reason, kind="dropped", scores=scores)
    return None


class LearnedStage(Stage[DecodedClip, DecodedClip]):
    """The filters' model towers, where the GPU is: clip embeddings from a CLIP/SigLIP image tower and the
    aesthetic score, for clips ``FilterStage`` passed (and the duplicate index kept). Runs in the caption
    worker just before captioning; a clip below ``filters.aesthetic.min_score`` is dropped there, still
    before any caption is paid for. Does nothing when the recipe has no towers (``FiltersConfig.learned``).
    """

    name = "filter"
    input_type = DecodedClip
    output_type = DecodedClip
    config: FiltersConfig

    def __init__(self, config: FiltersConfig | None = None) -> None:
        super().__init__(config or FiltersConfig())
        self.embedder: ClipEmbedder | None = None
        self.aesthetic: AestheticScorer | None = None

    def setup(self) -> None:
        embed, aesthetic = self.config.embed, self.config.aesthetic
        if self.config.enabled and embed is not None and embed.kind != "descriptor":
            self.embedder = ClipEmbedder(embed, "filters.embed.model")
            self.embedder.setup()
        if self.config.enabled and aesthetic is not None:
            self.aesthetic = AestheticScorer(aesthetic, "filters.aesthetic")
            self.aesthetic.setup()

    def teardown(self) -> None:
        for part in (self.embedder, self.aesthetic):
            if part is not None:
                part.teardown()

    def process_batch(self, batch: Sequence[DecodedClip]) -> list[DecodedClip | Failure]:
        if (self.embedder is None and self.aesthetic is None) or not batch:
            return list(batch)
        clips = [d.views[self.config.view].frames_THWC for d in batch]
        embeddings = self.embedder.embed(clips) if self.embedder is not None else [None] * len(batch)
        aesthetic = self.aesthetic.score(clips) if self.aesthetic is not None else [math.nan] * len(batch)
        out: list[DecodedClip | Failure] = []
        for decoded, embedding, score in zip(batch, embeddings, aesthetic, strict=True):
            curation = decoded.curation or Curation({})
            scores = {**curation.scores, "aesthetic": float(score)} if self.aesthetic else curation.scores
            dropped = _first_broken(self.config, decoded, {"aesthetic": scores.get("aesthetic", math.nan)})
            if dropped is not None:
                out.append(dropped.model_copy(update={"scores": scores}))
                continue
            if embedding is None:
                embedding = curation.embedding
            updated = replace(curation, scores=scores, embedding=embedding)
            out.append(replace(decoded, curation=updated))
        return out
