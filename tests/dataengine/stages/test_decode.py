from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataengine.records import Clip, DecodedClip, Failure, Source, Video
from dataengine.stages import DecodeConfig, DecodeStage, ProbeStage, SplitConfig, SplitStage, ViewConfig
from dataengine.stages.decode import passes
from tests.media import GoodClip, concat_shots, make_truncated_midstream

VIEWS = {
    "caption": ViewConfig(fps=2, max_frames=16, resize="short_side", size=64),
    "latents": ViewConfig(fps=8, max_frames=None, resize="crop", width=48, height=32),
}


def clips_of(path: Path, window_s: float = 1.0) -> list[Clip]:
    video = ProbeStage().probe(Source.from_uri(path))
    assert isinstance(video, Video), video
    split = SplitStage(SplitConfig(mode="fixed", window_s=window_s, min_clip_s=0.5, max_clip_s=window_s))
    return [c for c in split.split(video) if isinstance(c, Clip)]


def decode(clip: Clip, views: dict[str, ViewConfig] = VIEWS) -> DecodedClip | Failure:
    return DecodeStage(DecodeConfig(views=views)).decode(clip)


@pytest.mark.parametrize(
    "name", ["h264_audio", "hevc10", "vp9", "mjpeg_odd", "prores", "portrait", "rotated", "vfr"]
)
def test_every_good_clip_decodes_into_both_views(good_clips: dict[str, GoodClip], name: str) -> None:
    info = good_clips[name]
    clips = clips_of(info.path)
    assert len(clips) == round(info.duration_s)
    short, long_ = sorted((info.width, info.height))
    for clip in clips:
        out = decode(clip)
        assert isinstance(out, DecodedClip), out
        caption, latents = out.views["caption"], out.views["latents"]
        t, h, w, _ = caption.shape
        assert t == math.ceil(2 * clip.duration_s - 1e-6)
        assert min(h, w) == 64 and (h > w) == (info.height > info.width)
        assert max(h, w) == pytest.approx(64 * long_ / short, abs=2)
        assert latents.shape == (math.ceil(8 * clip.duration_s - 1e-6), 32, 48, 3)
        assert caption.frames_THWC.dtype == np.uint8 and caption.frames_THWC.flags.writeable
        np.testing.assert_allclose(np.diff(latents.timestamps_s), 1 / 8)
        assert latents.timestamps_s[0] == pytest.approx(clip.start_s)
        assert caption.frames_THWC.std() > 5  # real picture content, not a blank buffer


def test_frames_are_taken_at_their_timestamps(tmp_path: Path) -> None:
    red_then_blue = concat_shots(
        tmp_path / "red_blue.mp4", "color=red:size=64x64:rate=25:d=1", "color=blue:size=64x64:rate=25:d=1"
    )
    video = ProbeStage().probe(Source.from_uri(red_then_blue))
    assert isinstance(video, Video)
    clip = Clip.of(video, index=0, start_s=0.5, end_s=1.5)
    out = decode(clip, {"v": ViewConfig(fps=4, max_frames=None, resize="none")})
    assert isinstance(out, DecodedClip)
    frames = out.views["v"]
    np.testing.assert_allclose(frames.timestamps_s, [0.5, 0.75, 1.0, 1.25])
    mean_rgb = frames.frames_THWC.reshape(4, -1, 3).mean(axis=1)
    assert [("red" if m[0] > m[2] else "blue") for m in mean_rgb] == ["red", "red", "blue", "blue"]


def test_max_frames_lowers_the_rate_to_cover_the_whole_clip(good_clips: dict[str, GoodClip]) -> None:
    (clip,) = clips_of(good_clips["h264_audio"].path, window_s=3.0)
    out = decode(clip, {"v": ViewConfig(fps=10, max_frames=8, resize="fit", width=80, height=80)})
    assert isinstance(out, DecodedClip)
    frames = out.views["v"]
    assert frames.shape == (8, 60, 80, 3)
    assert frames.fps == pytest.approx(8 / 3)
    assert frames.timestamps_s[-1] == pytest.approx(7 * 3 / 8)


def test_variable_frame_rate_gives_evenly_spaced_frames(good_clips: dict[str, GoodClip]) -> None:
    late = clips_of(good_clips["vfr"].path)[2]  # 2-3 s: the 10 fps half of the source
    out = decode(late, {"v": ViewConfig(fps=20, max_frames=None, resize="none")})
    assert isinstance(out, DecodedClip)
    assert out.views["v"].shape[0] == 20  # duplicates where the source has fewer frames


def test_a_clip_truncated_mid_stream_is_recorded_not_raised(
    good_clips: dict[str, GoodClip], tmp_path: Path
) -> None:
    damaged = make_truncated_midstream(good_clips["h264_audio"].path, tmp_path / "cut_short.mp4")
    results = DecodeStage(DecodeConfig(views=VIEWS)).process_batch(clips_of(damaged))
    assert isinstance(results[0], DecodedClip)
    failures = [r for r in results if isinstance(r, Failure)]
    assert failures and all(f.stage == "decode" and "frames" in f.reason for f in failures)


def test_a_file_that_vanished_before_decode_is_recorded(
    good_clips: dict[str, GoodClip], tmp_path: Path
) -> None:
    copy = tmp_path / "soon_gone.mp4"
    copy.write_bytes(good_clips["h264_audio"].path.read_bytes())
    clips = clips_of(copy)
    copy.unlink()
    results = DecodeStage(DecodeConfig(views=VIEWS)).process_batch(clips)  # the pass fails, then each clip
    assert len(results) == 3
    assert all(isinstance(r, Failure) and "ffmpeg failed" in r.reason for r in results)


def test_a_pass_over_many_clips_equals_decoding_them_one_by_one(good_clips: dict[str, GoodClip]) -> None:
    video_a, video_b = clips_of(good_clips["h264_audio"].path), clips_of(good_clips["vp9"].path)
    overlapping = Clip.of(_video(good_clips["h264_audio"].path), index=9, start_s=0.5, end_s=2.5)
    off_grid = Clip.of(_video(good_clips["h264_audio"].path), index=10, start_s=1.3, end_s=2.1)
    batch = [video_a[2], video_a[0], overlapping, off_grid, video_b[0], video_b[1], video_a[1]]
    stage = DecodeStage(DecodeConfig(views=VIEWS, max_clips_per_pass=4))
    together = stage.process_batch(batch)
    assert [r.clip_id for r in together] == [c.clip_id for c in batch]
    for clip, joint in zip(batch, together, strict=True):
        alone = stage.decode(clip)
        assert isinstance(joint, DecodedClip) and isinstance(alone, DecodedClip)
        for name in VIEWS:
            np.testing.assert_array_equal(joint.views[name].timestamps_s, alone.views[name].timestamps_s)
            assert joint.views[name].shape == alone.views[name].shape
            diff = np.abs(joint.views[name].frames_THWC.astype(int) - alone.views[name].frames_THWC).mean()
            assert diff < 1.0, (clip.start_s, name, diff)


def test_clips_are_grouped_into_passes_per_file_in_order(good_clips: dict[str, GoodClip]) -> None:
    a, b = clips_of(good_clips["h264_audio"].path), clips_of(good_clips["vp9"].path)
    runs = passes([a[0], a[1], b[0], a[2], b[1]], max_clips=4)
    assert [[c.clip_id for c in run] for run in runs] == [
        [a[0].clip_id, a[1].clip_id],
        [b[0].clip_id],
        [a[2].clip_id],
        [b[1].clip_id],
    ]
    assert [len(run) for run in passes(a, max_clips=2)] == [2, 1]


def _video(path: Path) -> Video:
    video = ProbeStage().probe(Source.from_uri(path))
    assert isinstance(video, Video)
    return video


def test_all_views_of_aligned_clips_come_from_one_ffmpeg_pass(good_clips: dict[str, GoodClip]) -> None:
    clips = clips_of(good_clips["h264_audio"].path)
    cmd = DecodeStage(DecodeConfig(views=VIEWS)).null_command(clips)
    assert cmd.count("-i") == 1
    assert "split=2" in " ".join(cmd)  # three 1-s clips on one grid: one branch per view, not per clip


def test_a_decode_that_runs_over_its_time_is_killed_and_recorded(good_clips: dict[str, GoodClip]) -> None:
    clip = clips_of(good_clips["h264_audio"].path)[0]
    result = DecodeStage(DecodeConfig(views=VIEWS, timeout_s=0.001)).decode(clip)
    assert isinstance(result, Failure) and "timed out" in result.reason


@pytest.mark.parametrize("name", ["png", "jpeg"])
def test_an_image_decodes_to_one_frame_per_view(images: dict[str, Path], name: str) -> None:
    (clip,) = clips_of(images[name])
    views = {
        **VIEWS,  # their fps (2, 8) and frame counts must not make more than one frame of a still
        "all": ViewConfig(fps=None, max_frames=None, resize="none"),
        "fast": ViewConfig(fps=30, max_frames=None, resize="fit", width=32, height=32),
    }
    out = decode(clip, views)
    assert isinstance(out, DecodedClip), out
    shapes = {view: frames.shape for view, frames in out.views.items()}
    assert shapes == {
        "caption": (1, 64, 86, 3),  # 64x48 -> short side 64
        "latents": (1, 32, 48, 3),  # centred 64x43 box scaled to 48x32
        "all": (1, 48, 64, 3),
        "fast": (1, 24, 32, 3),
    }
    for frames in out.views.values():
        assert frames.fps == 1.0 and frames.timestamps_s.tolist() == [0.0]
    picture = np.asarray(Image.open(images[name]).convert("RGB"))
    difference = np.abs(out.views["all"].frames_THWC[0].astype(int) - picture)
    # PNG: the very pixels. JPEG: PIL and ffmpeg upsample 4:2:0 chroma differently at testsrc2's colour edges.
    assert difference.max() == 0 if name == "png" else np.median(difference) <= 2
