"""Synthetic videos: strict specs, deterministic draws, exact frames, and files ffmpeg agrees with."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from dataengine.world.generate import random_spec, synthesize, write_video
from dataengine.world.language import WORLD_VERSION, reference_caption
from dataengine.world.render import render_frames, render_shot
from dataengine.world.spec import PALETTE, ObjectSpec, ShotSpec, VideoSpec

FPS = 10


def _object(**overrides: object) -> ObjectSpec:
    fields = {"shape": "square", "colour": "white", "size_px": 16, "start_xy": (30.0, 32.0)}
    return ObjectSpec.model_validate({**fields, "velocity_xy": (20.0, 0.0), **overrides})


def _two_shots() -> VideoSpec:
    """1.0 s of a white square moving right over plain red, cut to 0.5 s of a yellow circle on blue checks."""
    still_camera = ShotSpec(duration_s=1.0, background="red", pattern="flat", objects=[_object()])
    panning = ShotSpec(
        duration_s=0.5,
        background="blue",
        pattern="checker",
        pan_xy=(10.0, 0.0),
        objects=[_object(shape="circle", colour="yellow", start_xy=(70.0, 20.0))],
    )
    return VideoSpec(width=96, height=64, fps=FPS, shots=[still_camera, panning])


def _ffprobe_stream(path: Path) -> dict[str, str]:
    cmd = ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    stream: dict[str, str] = json.loads(out)["streams"][0]
    return stream


def test_specs_reject_unknown_keys_colours_and_bad_geometry() -> None:
    with pytest.raises(ValidationError, match="colour"):
        _object(colour="pink")
    with pytest.raises(ValidationError, match="extra"):
        _object(speed=3.0)
    with pytest.raises(ValidationError):
        ShotSpec(duration_s=1.0, background="red", pattern="flat", objects=[_object()] * 4)
    with pytest.raises(ValidationError, match="even"):
        VideoSpec(width=95, height=64, fps=FPS, shots=_two_shots().shots)
    dumped = _two_shots().model_dump(mode="json")
    assert VideoSpec.model_validate(dumped) == _two_shots()
    with pytest.raises(ValidationError, match="extra"):
        VideoSpec.model_validate({**dumped, "colour_space": "bt709"})


def test_spec_times() -> None:
    spec = _two_shots()
    assert spec.shot_times == [(0.0, 1.0), (1.0, 1.5)]
    assert (spec.duration_s, spec.n_frames) == (1.5, 15)


def test_random_spec_is_deterministic_and_valid() -> None:
    assert random_spec(np.random.default_rng(5)) == random_spec(np.random.default_rng(5))
    assert random_spec(np.random.default_rng(5)) != random_spec(np.random.default_rng(6))
    for seed in range(50):
        spec = random_spec(np.random.default_rng(seed), max_shots=3)
        assert 2.0 <= spec.duration_s <= 4.0
        assert spec.n_frames == pytest.approx(spec.duration_s * spec.fps)  # cuts fall on frame boundaries
        for prev, shot in zip(spec.shots, spec.shots[1:], strict=False):
            assert (prev.background, prev.pattern) != (shot.background, shot.pattern)
        for shot, obj in ((s, o) for s in spec.shots for o in s.objects):
            assert math.dist(PALETTE[obj.colour], PALETTE[shot.background]) >= 150
            for t in (0.0, shot.duration_s):  # the centre is on screen at both ends of the shot
                x, y = (obj.start_xy[a] + (obj.velocity_xy[a] - shot.pan_xy[a]) * t for a in (0, 1))
                assert 0 < x < spec.width and 0 < y < spec.height


def test_random_pans_only_over_a_pattern() -> None:
    """The truth states only what is on screen: a pan over a plain background moves no pixel."""
    shots = [
        shot for seed in range(60) for shot in random_spec(np.random.default_rng(seed), max_shots=3).shots
    ]
    moving = [shot.pattern for shot in shots if shot.pan_xy != (0.0, 0.0)]
    assert "flat" not in moving
    assert {"stripes", "checker"} <= set(moving)  # patterned shots still pan
    flat = next(shot for shot in shots if shot.pattern == "flat")
    # Pan the camera and add the pan to every object's world velocity: the on-screen paths stay the same.
    objects = [
        o.model_copy(update={"velocity_xy": (o.velocity_xy[0] + 25, o.velocity_xy[1] - 5)})
        for o in flat.objects
    ]
    panned = flat.model_copy(update={"pan_xy": (25.0, -5.0), "objects": objects})
    for tau in (0.0, flat.duration_s / 2, flat.duration_s):
        assert (render_shot(flat, tau, 320, 240) == render_shot(panned, tau, 320, 240)).all()


def test_render_frames_draws_objects_and_backgrounds_exactly() -> None:
    spec = _two_shots()
    frames_THWC = np.stack(list(render_frames(spec)))
    assert frames_THWC.shape == (15, 64, 96, 3) and frames_THWC.dtype == np.uint8
    white, red, yellow = (np.array(PALETTE[c]) for c in ("white", "red", "yellow"))
    for i in (0, 5, 9):  # the square's centre moves 20 px/s to the right from (30, 32)
        x = 30 + 20 * i / FPS
        assert (frames_THWC[i, 32, int(x)] == white).all()
        assert (frames_THWC[i, 5, 90] == red).all() and (frames_THWC[i, 60, 2] == red).all()
        assert ((frames_THWC[i] == white).all(axis=-1)).sum() == 16 * 16  # a 16 px square covers 256 pixels
    # After the cut at 1.0 s: the circle moves 20 px/s right in a world panning 10 px/s right.
    assert (frames_THWC[10, 20, 70] == yellow).all()
    assert (frames_THWC[14, 20, 70 + 4] == yellow).all()
    assert not (frames_THWC[10:] == red).all(axis=-1).any()


def test_pan_moves_the_background() -> None:
    spec = _two_shots()
    frames_THWC = list(render_frames(spec))[10:]  # the checkered shot pans 10 px/s, 1 px per frame
    rows = slice(40, 64)  # below the circle
    for k in range(1, 5):
        assert (frames_THWC[k][rows, :-k] == frames_THWC[0][rows, k:]).all()
        assert not (frames_THWC[k][rows] == frames_THWC[0][rows]).all()


def test_reference_caption_names_every_object_and_cut() -> None:
    spec = random_spec(np.random.default_rng(3), max_shots=3)
    caption = reference_caption(spec)
    assert caption == reference_caption(spec)
    for obj in (obj for shot in spec.shots for obj in shot.objects):
        assert f"{obj.shape.capitalize()}: {obj.colour}," in caption
    assert caption.count("the scene cuts") == len(spec.shots) - 1
    hand_made = reference_caption(_two_shots())
    assert hand_made.startswith(
        "One shape moves over a plain red background. Square: white, large, 16 px wide"
    )
    assert "At 1.0 s the scene cuts." in hand_made
    assert "the camera moves (pan right) at (10, 0) px/s" in hand_made


def test_write_video_matches_ground_truth(tmp_path: Path) -> None:
    spec = _two_shots()
    path = write_video(spec, tmp_path / "two.mp4")
    stream = _ffprobe_stream(path)
    assert (int(stream["width"]), int(stream["height"])) == (96, 64)
    assert abs(int(stream["nb_read_frames"]) - spec.n_frames) <= 1
    assert float(stream["duration"]) == pytest.approx(spec.duration_s, abs=1 / FPS)
    truth = json.loads(path.with_suffix(".json").read_text())
    assert VideoSpec.model_validate(truth["spec"]) == spec
    assert truth["shots"] == [{"start_s": 0.0, "end_s": 1.0}, {"start_s": 1.0, "end_s": 1.5}]
    assert (truth["n_frames"], truth["duration_s"]) == (15, 1.5)
    assert truth["reference_caption"] == reference_caption(spec)
    assert len(truth["reference_structured"]) == 2 and truth["world_version"] == WORLD_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.json", "two.mp4"]
    cmd = ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    decoded = subprocess.run(cmd, check=True, capture_output=True).stdout
    decoded_THWC = np.frombuffer(decoded, dtype=np.uint8).reshape(-1, 64, 96, 3).astype(int)
    rendered_THWC = np.stack(list(render_frames(spec))).astype(int)
    assert np.abs(decoded_THWC - rendered_THWC).mean() < 6  # lossy yuv420p, but the same picture


def test_write_video_reports_ffmpeg_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"ffmpeg failed.*no_such_codec"):
        write_video(_two_shots(), tmp_path / "broken.mp4", codec="no_such_codec")
    assert list(tmp_path.iterdir()) == []


def test_scdet_finds_the_cuts(tmp_path: Path) -> None:
    specs = [random_spec(np.random.default_rng(seed), max_shots=3) for seed in range(4)]
    for i, spec in enumerate([_two_shots(), *(s for s in specs if len(s.shots) > 1)]):
        path = write_video(spec, tmp_path / f"cut_{i}.mp4")
        cmd = ["ffmpeg", "-hide_banner", "-i", str(path), "-vf", "scdet=threshold=10", "-f", "null", "-"]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
        found = [float(t) for t in re.findall(r"lavfi\.scd\.time:\s*([0-9.]+)", log)]
        cuts = [start for start, _ in spec.shot_times[1:]]
        assert len(found) == len(cuts), (found, cuts)
        assert np.abs(np.array(found) - cuts).max() <= 1 / spec.fps + 1e-6


def test_synthesize_is_deterministic(tmp_path: Path) -> None:
    paths = synthesize(tmp_path / "a", 2, seed=7, width=128, height=96)
    assert [p.name for p in paths] == ["video_000.mp4", "video_001.mp4"]
    again = synthesize(tmp_path / "b", 2, seed=7, width=128, height=96)
    other = synthesize(tmp_path / "c", 1, seed=8, width=128, height=96)
    for first, second in zip(paths, again, strict=True):
        assert first.with_suffix(".json").read_bytes() == second.with_suffix(".json").read_bytes()
    assert paths[0].with_suffix(".json").read_bytes() != other[0].with_suffix(".json").read_bytes()
    assert _ffprobe_stream(paths[1])["width"] == 128
