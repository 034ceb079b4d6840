from __future__ import annotations

from pathlib import Path

import pytest

from dataengine.records import DecodedClip, Failure, Source
from dataengine.stages import DecodeStage, ProbeStage, SplitConfig, SplitStage
from pipelines.local import batched, run_chain
from tests.media import GoodClip


def test_batched() -> None:
    assert list(batched(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(batched([], 3)) == []


def test_failures_skip_later_stages_and_good_items_flow(
    good_clips: dict[str, GoodClip], broken_inputs: dict[str, Path]
) -> None:
    sources = [
        Source.from_uri(p)
        for p in (broken_inputs["zero_bytes"], good_clips["vp9"].path, broken_inputs["audio_only"])
    ]
    split = SplitStage(SplitConfig(mode="fixed", window_s=1, min_clip_s=0.5, max_clip_s=1))
    results = list(run_chain([ProbeStage(), split, DecodeStage()], sources, batch_size=2))
    decoded = [r for r in results if isinstance(r, DecodedClip)]
    failures = [r for r in results if isinstance(r, Failure)]
    assert len(decoded) == 2 and {f.stage for f in failures} == {"probe"} and len(failures) == 2


def test_mismatched_stages_are_refused_when_the_chain_is_built() -> None:
    with pytest.raises(TypeError, match="'probe' emits Video but 'decode' expects Clip"):
        list(run_chain([ProbeStage(), DecodeStage()], []))
