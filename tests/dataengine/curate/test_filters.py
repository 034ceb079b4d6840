"""The filter stage on clips made with ffmpeg: each case is kept or dropped by the check that should drop it,
with every score recorded, and a check that raises on one clip fails that clip only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dataengine.curate.dedup import DuplicateIndex, NearDupConfig
from dataengine.curate.filters import Bound, FiltersConfig
from dataengine.curate.scores import SCORES
from dataengine.records import DecodedClip, Failure, Frames, Source
from dataengine.stages import DecodeConfig, DecodeStage, ProbeStage, SplitConfig, SplitStage, ViewConfig
from dataengine.stages.filter import FilterStage
from pipelines.local import run_chain

# One 4 s clip per case, decoded as the demo recipe decodes its caption view.
CHAIN = (
    ProbeStage(),
    SplitStage(SplitConfig(mode="fixed", window_s=4.0, max_clip_s=4.0)),
    DecodeStage(DecodeConfig(views={"caption": ViewConfig(fps=2, max_frames=8, size=112)})),
)
# The check each case must be dropped by, with the generic (non-demo) defaults; None: kept.
EXPECTED = {
    "moving": None,
    "static": "frozen",
    "still": None,
    "black": "black",
    "fade": "fade",
    "flash": "flash",
    "text": "text_area",
    "letterbox": "active_area",
    "blurry": "edge_sharpness",
    "reencoded": None,
    "cropped": None,
    "different": None,
}


@pytest.fixture(scope="module")
def decoded(curation_cases: dict[str, Path]) -> dict[str, DecodedClip]:
    names = list(curation_cases)
    clips = [c for c in run_chain(list(CHAIN), [Source.from_uri(curation_cases[n]) for n in names])]
    assert all(isinstance(c, DecodedClip) for c in clips) and len(clips) == len(names)
    by_uri = {c.clip.uri: c for c in clips if isinstance(c, DecodedClip)}
    return {n: by_uri[Source.from_uri(curation_cases[n]).uri] for n in names}


@pytest.fixture(scope="module")
def filtered(decoded: dict[str, DecodedClip]) -> dict[str, DecodedClip | Failure]:
    with FilterStage(FiltersConfig()) as stage:
        out = stage.process_batch(list(decoded.values()))
    return dict(zip(decoded, out, strict=True))


def test_each_case_is_kept_or_dropped_by_the_check_that_should(
    filtered: dict[str, DecodedClip | Failure],
) -> None:
    landed = {}
    for name, result in filtered.items():
        if isinstance(result, Failure):
            assert result.kind == "dropped" and result.stage == "filter", result
            landed[name] = result.reason.split()[0]
        else:
            landed[name] = None
    assert landed == EXPECTED


def test_a_drop_gives_its_score_and_threshold_and_keeps_every_score(
    filtered: dict[str, DecodedClip | Failure],
) -> None:
    text = filtered["text"]
    assert isinstance(text, Failure)
    score = text.scores["text_area"]
    assert score > 0.05 and text.reason == f"text_area {score:.4g} > 0.05 (filters.text_area.max)"
    for name in SCORES:  # every enabled score, even those checked after the one that dropped it
        if name not in ("aesthetic", "caption_match"):
            assert name in text.scores, name


def test_a_kept_clip_carries_scores_fingerprint_and_embedding(
    filtered: dict[str, DecodedClip | Failure],
) -> None:
    moving = filtered["moving"]
    assert isinstance(moving, DecodedClip) and moving.curation is not None
    curation = moving.curation
    assert curation.fingerprint is not None and len(curation.fingerprint.phash) == 4
    assert curation.fingerprint.scores == curation.scores
    assert curation.embedding is not None and math.isclose(
        float(np.linalg.norm(curation.embedding)), 1.0, rel_tol=1e-5
    )
    still = filtered["still"]  # one frame: time-based scores are not measurable, and drop nothing
    assert isinstance(still, DecodedClip) and still.curation is not None
    assert math.isnan(still.curation.scores["motion"]) and math.isnan(still.curation.scores["frozen"])


def test_the_duplicate_index_drops_reencodes_and_crops_and_keeps_other_footage(
    filtered: dict[str, DecodedClip | Failure],
) -> None:
    index = DuplicateIndex(NearDupConfig())
    verdicts = {}
    for name in ("moving", "reencoded", "cropped", "different", "still"):
        clip = filtered[name]
        assert isinstance(clip, DecodedClip) and clip.curation and clip.curation.fingerprint
        found = index.check(clip.clip_id, clip.curation.fingerprint)
        verdicts[name] = found
        if found is None:
            index.add(clip.clip_id, clip.curation.fingerprint)
    moving = filtered["moving"].clip_id  # type: ignore[union-attr]
    assert verdicts["moving"] is None and verdicts["different"] is None
    assert verdicts["reencoded"] is not None and verdicts["reencoded"][0] == moving
    assert verdicts["cropped"] is not None and verdicts["cropped"][0] == moving


def test_score_only_and_disabled_bounds(decoded: dict[str, DecodedClip]) -> None:
    config = FiltersConfig(
        black=Bound(score_only=True), frozen=Bound(enabled=False), motion=Bound(enabled=False)
    )
    with FilterStage(config) as stage:
        (black,) = stage.process_batch([decoded["black"]])
    assert isinstance(black, Failure) and black.reason.startswith("blank ")  # the next check caught it
    assert black.scores["black"] == 1.0 and "frozen" not in black.scores and "motion" not in black.scores


def test_a_check_that_raises_fails_that_clip_and_the_batch_goes_on(decoded: dict[str, DecodedClip]) -> None:
    moving = decoded["moving"]
    tiny = Frames(np.full((4, 2, 2, 3), 128, np.uint8), 2.0, np.arange(4) / 2.0)  # optical flow refuses 2x2
    broken = DecodedClip(moving.clip.model_copy(update={"clip_id": "f" * 32}), {"caption": tiny})
    with FilterStage(FiltersConfig(embed=None)) as stage:
        out = stage.process_batch([broken, moving])
    assert isinstance(out[0], Failure) and out[0].kind == "error" and out[0].stage == "filter"
    assert out[0].reason.startswith("the motion check raised")
    assert isinstance(out[1], DecodedClip)
