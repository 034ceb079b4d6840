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

from dataengine.curate import measure
from dataengine.curate.dedup import frames_digest, phash_frames
from dataengine.curate.embed import ClipEmbedder
from dataengine.curate.filters import FiltersConfig
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
