from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dataengine.records import Clip, Failure, Source, Video
from dataengine.stages import ProbeStage, SplitConfig, SplitStage
from dataengine.stages.split import detect_cuts


def video_of(path: Path) -> Video:
    video = ProbeStage().probe(Source.from_uri(path))
    assert isinstance(video, Video), video
    return video


def spans(results: list[Clip | Failure]) -> list[tuple[float | None, float | None, str]]:
    return [(r.start_s, r.end_s, "clip" if isinstance(r, Clip) else r.kind) for r in results]


def test_fixed_windows_keep_a_long_enough_tail(scene_cut_clip: Path) -> None:
    split = SplitStage(SplitConfig(mode="fixed", window_s=2, min_clip_s=1, max_clip_s=2))
    assert spans(split.split(video_of(scene_cut_clip))) == [
        (0.0, 2.0, "clip"),
        (2.0, 4.0, "clip"),
        (4.0, 6.0, "clip"),
        (6.0, 7.0, "clip"),
    ]


def test_fixed_windows_drop_a_short_tail_with_a_reason(scene_cut_clip: Path) -> None:
    split = SplitStage(SplitConfig(mode="fixed", window_s=2, min_clip_s=1.5, max_clip_s=2))
    results = split.split(video_of(scene_cut_clip))
    assert spans(results)[-1] == (6.0, 7.0, "dropped")
    dropped = results[-1]
    assert isinstance(dropped, Failure) and dropped.stage == "split"
    assert "shorter than min_clip_s=1.5" in dropped.reason and dropped.clip_id


def test_overlapping_windows(scene_cut_clip: Path) -> None:
    split = SplitStage(SplitConfig(mode="fixed", window_s=4, stride_s=2, min_clip_s=1, max_clip_s=4))
    assert spans(split.split(video_of(scene_cut_clip))) == [
        (0.0, 4.0, "clip"),
        (2.0, 6.0, "clip"),
        (4.0, 7.0, "clip"),
    ]


def test_scdet_finds_the_hard_cut(scene_cut_clip: Path) -> None:
    assert detect_cuts(str(scene_cut_clip), SplitConfig()) == [pytest.approx(3.0, abs=0.05)]


def test_scene_mode_keeps_short_shots_whole_and_windows_long_ones(scene_cut_clip: Path) -> None:
    video = video_of(scene_cut_clip)
    whole = SplitStage(SplitConfig(mode="scenes", window_s=2, max_clip_s=5)).split(video)
    assert spans(whole) == [(0.0, 3.0, "clip"), (3.0, 7.0, "clip")]
    assert [c.shot for c in whole if isinstance(c, Clip)] == [0, 1]
    windowed = SplitStage(SplitConfig(mode="scenes", window_s=2, max_clip_s=2.5)).split(video)
    assert spans(windowed) == [(0.0, 2.0, "clip"), (2.0, 3.0, "clip"), (3.0, 5.0, "clip"), (5.0, 7.0, "clip")]
    assert [c.shot for c in windowed if isinstance(c, Clip)] == [0, 0, 1, 1]


def test_a_video_shorter_than_the_minimum_is_dropped_with_a_reason(scene_cut_clip: Path) -> None:
    results = SplitStage(SplitConfig(mode="scenes", min_clip_s=3.5, window_s=4, max_clip_s=5)).split(
        video_of(scene_cut_clip)
    )
    assert spans(results) == [(0.0, 3.0, "dropped"), (3.0, 7.0, "clip")]


def test_clip_ids_are_deterministic_hex_keys(scene_cut_clip: Path) -> None:
    split = SplitStage(SplitConfig(mode="fixed", window_s=1, min_clip_s=0.5, max_clip_s=1))
    first = [r.clip_id for r in split.split(video_of(scene_cut_clip))]
    again = [r.clip_id for r in split.split(video_of(scene_cut_clip))]
    assert first == again and len(set(first)) == len(first) == 7
    assert all(cid is not None and len(cid) == 32 and "." not in cid for cid in first)


def test_inconsistent_lengths_are_a_config_error() -> None:
    with pytest.raises(ValidationError, match="min_clip_s <= window_s <= max_clip_s"):
        SplitConfig(window_s=20, max_clip_s=10)


@pytest.mark.parametrize(
    "config",
    [
        SplitConfig(mode="scenes"),
        SplitConfig(mode="fixed", window_s=0.25, min_clip_s=0.1, max_clip_s=0.5),  # would cut 1 s in four
        SplitConfig(mode="fixed", window_s=3, min_clip_s=2, max_clip_s=4),  # would drop 1 s as too short
    ],
)
def test_an_image_is_one_clip_whatever_the_mode(images: dict[str, Path], config: SplitConfig) -> None:
    video = video_of(images["png"])
    (clip,) = SplitStage(config).split(video)
    assert isinstance(clip, Clip) and (clip.start_s, clip.end_s, clip.index, clip.shot) == (0.0, 1.0, 0, 0)
    assert clip.probe.is_image and clip.clip_id == SplitStage(config).split(video)[0].clip_id
