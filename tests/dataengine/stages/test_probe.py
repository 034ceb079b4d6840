from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from dataengine.inputs import InputsConfig
from dataengine.records import Failure, Source, Video
from dataengine.stages import ProbeConfig, ProbeStage
from tests.crafted import REFUSALS, ReferenceTrap
from tests.media import GoodClip, make_animations

# Each broken input and a word its failure reason must contain.
EXPECTED_REASONS = {
    "zero_bytes": "empty file",
    "truncated": "undecodable header",
    "random_bytes": "undecodable header",
    "text_file": "text file, not a video",
    "audio_only": "no video stream (found: audio)",
    "directory": "not a regular file",
    "dangling_symlink": "dangling symlink",
    "missing": "missing file",
    "huge_header": "65535x65535",
    "over_limit": "over the limits",
}


def probe(path: Path, **config: object) -> Video | Failure:
    return ProbeStage(ProbeConfig(**config)).probe(Source.from_uri(path))  # type: ignore[arg-type]


def test_good_clips_report_display_facts(good_clips: dict[str, GoodClip]) -> None:
    for name, clip in good_clips.items():
        video = probe(clip.path)
        assert isinstance(video, Video), f"{name}: {video}"
        facts = video.probe
        assert (facts.width, facts.height) == (clip.width, clip.height), name
        assert facts.duration_s == pytest.approx(clip.duration_s, abs=0.15), name
        assert facts.codec == clip.codec, name
        assert facts.is_vfr == clip.vfr, name
        assert facts.rotation == clip.rotation, name
        assert facts.bit_depth == clip.bit_depth, name
        assert facts.has_audio == clip.has_audio, name
        assert facts.n_frames >= 1 and facts.avg_fps > 0


def test_every_broken_input_is_a_failure_with_a_reason(broken_inputs: dict[str, Path]) -> None:
    assert set(broken_inputs) == set(EXPECTED_REASONS)
    for name, path in broken_inputs.items():
        result = probe(path)
        assert isinstance(result, Failure), name
        assert result.stage == "probe" and result.kind == "error"
        assert EXPECTED_REASONS[name] in result.reason, f"{name}: {result.reason}"
        assert "Traceback" not in result.reason


def test_a_batch_with_broken_inputs_keeps_going(
    good_clips: dict[str, GoodClip], broken_inputs: dict[str, Path]
) -> None:
    paths = [*broken_inputs.values(), good_clips["h264_audio"].path]
    results = ProbeStage().process_batch([Source.from_uri(p) for p in paths])
    assert [type(r) for r in results] == [Failure] * len(broken_inputs) + [Video]


def test_still_images_are_one_frame_videos(images: dict[str, Path]) -> None:
    assert {"png", "jpeg"} <= set(images)
    for name, path in images.items():
        video = probe(path)
        assert isinstance(video, Video), f"{name}: {video}"
        facts = video.probe
        assert facts.is_image and (facts.width, facts.height) == (64, 48), name
        assert (facts.n_frames, facts.n_frames_exact) == (1, True), name
        assert (facts.duration_s, facts.avg_fps, facts.r_fps, facts.is_vfr) == (1.0, 1.0, 1.0, False), name
    assert probe(images["jpeg"]).probe.codec == "mjpeg"  # type: ignore[union-attr]


def test_images_false_refuses_stills_as_before(images: dict[str, Path]) -> None:
    for name in ("png", "jpeg"):
        result = probe(images[name], images=False)
        assert isinstance(result, Failure) and result.stage == "probe"
        assert "still image" in result.reason and "not a video" in result.reason, result.reason
    assert "still image (png)" in probe(images["png"], images=False).reason  # type: ignore[union-attr]


def test_size_limits_apply_to_images(images: dict[str, Path]) -> None:
    assert "over the limits" in probe(images["png"], max_width=32).reason  # type: ignore[union-attr]
    assert "over the limit of 10" in probe(images["png"], max_file_bytes=10).reason  # type: ignore[union-attr]


def test_animations_are_not_stills(tmp_path: Path) -> None:
    animations = make_animations(tmp_path)
    gif = probe(animations["gif"])
    assert isinstance(gif, Video) and not gif.probe.is_image and gif.probe.n_frames == 10
    # This ffmpeg reads no frames from animated WebP; it must not pass as a one-frame image either.
    webp = probe(animations["webp"])
    assert not (isinstance(webp, Video) and webp.probe.is_image), webp


def test_limits_are_configurable(good_clips: dict[str, GoodClip]) -> None:
    path = good_clips["h264_audio"].path
    assert "duration 3.0 s is over the limit" in probe(path, max_duration_s=1).reason  # type: ignore[union-attr]
    assert "over the limits" in probe(path, max_pixels=1000).reason  # type: ignore[union-attr]
    assert "over the limit of 100" in probe(path, max_file_bytes=100).reason  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_inputs_that_point_elsewhere_are_failures_and_what_they_name_is_never_read(
    reference_trap: ReferenceTrap, name: str, tmp_path: Path
) -> None:
    """An HLS playlist or ffconcat list named .mp4, an image-sequence pattern name, and a playlist fetched
    over HTTP into the cache: each is a probe failure that says what it is; nothing it names is opened."""
    uri = reference_trap.remote_url if name == "remote" else reference_trap.inputs[name]
    config = ProbeConfig(fetch=InputsConfig(cache_dir=tmp_path / "cache"))
    result = ProbeStage(config).probe(Source.from_uri(uri))
    assert isinstance(result, Failure) and result.stage == "probe", result
    assert REFUSALS[name] in result.reason
    assert reference_trap.untouched()
    if name == "remote":  # the refused file is the cached copy, fetched once
        assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".mp4"]
        assert reference_trap.server.requests.count("/remote.mp4") == 1


def test_a_fifo_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    assert "not a regular file" in probe(fifo).reason  # type: ignore[union-attr]


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="timeout_sec"):
        ProbeConfig(timeout_sec=3)  # type: ignore[call-arg]


def test_programming_errors_are_not_swallowed() -> None:
    with pytest.raises(AttributeError):
        ProbeStage().process_batch(["not a Source record"])  # type: ignore[list-item]


def test_a_probe_that_runs_over_its_time_is_killed_and_recorded(good_clips: dict[str, GoodClip]) -> None:
    result = probe(good_clips["h264_audio"].path, timeout_s=0.001)
    assert isinstance(result, Failure) and "ffprobe timed out after 0.001 s" in result.reason
