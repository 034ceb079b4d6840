"""Random synthetic videos: draw a valid ``VideoSpec``, encode it with ffmpeg, and write its ground truth
(the spec, shot times and the world's reference caption) beside it as JSON. ``dataengine synth`` and the
tests use ``synthesize``; caption fidelity and distillation draw specs with ``random_spec``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from dataengine.world.language import WORLD_VERSION, reference_caption, video_captions
from dataengine.world.render import render_frames, render_shot
from dataengine.world.spec import PALETTE, ObjectSpec, ShotSpec, VideoSpec

_MIN_OBJECT_CONTRAST = 150.0  # RGB distance between an object's colour and its background colour
_MAX_SCREEN_SPEED = 60.0  # px/s along each axis, for random objects
_MIN_CUT_SCORE = 20.0  # _cut_score across every random cut: well above `scdet=threshold=10`
_MAX_DRAWS = 100
_PATTERNS = ("flat", "stripes", "checker")
_TIME_STEPS = (0.25, 0.2, 0.5, 1.0)  # random shot lengths are multiples of the first frame-aligned one


def _cut_score(a_HWC: np.ndarray, b_HWC: np.ndarray) -> float:
    """How different two frames look to ffmpeg's scdet: the mean absolute difference of their BT.601 YCbCr
    planes in % of full scale, each chroma plane weighted a quarter of luma as in yuv420p."""
    rgb_to_ycbcr = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]])
    diff = np.abs((a_HWC.astype(np.float64) - b_HWC) @ rgb_to_ycbcr.T / 255.0).mean(axis=(0, 1))
    return float((4 * diff[0] + diff[1] + diff[2]) / 6 / 256 * 100)


def _draw_object(
    rng: np.random.Generator, colour: str, shot_s: float, pan: tuple[float, float], width: int, height: int
) -> ObjectSpec:
    size = int(rng.integers(min(width, height) // 8, min(width, height) * 2 // 7 + 1))
    low, high = np.full(2, size / 2 + 2), np.array([width, height]) - size / 2 - 2
    start = rng.uniform(low, high)
    end = np.clip(start + rng.uniform(-_MAX_SCREEN_SPEED, _MAX_SCREEN_SPEED, 2) * shot_s, low, high)
    # The on-screen path runs from start to end, so the world velocity adds the pan back.
    velocity = np.asarray(pan) + (end - start) / shot_s
    return ObjectSpec(
        shape=rng.choice(["circle", "square", "triangle"]).item(),
        colour=colour,
        size_px=size,
        start_xy=(float(round(start[0])), float(round(start[1]))),
        velocity_xy=(float(round(velocity[0])), float(round(velocity[1]))),
    )


def _draw_pan(rng: np.random.Generator) -> tuple[float, float]:
    if rng.random() < 0.4:
        return 0.0, 0.0
    pan_x = float(rng.choice([-1, 1]) * rng.uniform(10, 40))
    # |pan_y| <= |pan_x| / 2 keeps the pan well away from the direction of the diagonal stripes.
    pan_y = float(rng.uniform(-0.5, 0.5) * abs(pan_x)) if rng.random() < 0.3 else 0.0
    return float(round(pan_x)), float(round(pan_y))


def _draw_shot(
    rng: np.random.Generator, shot_s: float, prev: ShotSpec | None, width: int, height: int
) -> ShotSpec:
    background = rng.choice([c for c in PALETTE if prev is None or c != prev.background]).item()
    pattern = rng.choice([p for p in _PATTERNS if prev is None or p != prev.pattern]).item()
    pan = _draw_pan(rng)
    if pattern == "flat":
        # A pan over a plain background moves no pixel: what a viewer sees is a still camera. (The pan is
        # drawn anyway, so every later draw, and so every pixel of every clip, stays as it was.)
        pan = (0.0, 0.0)
    contrasting = [c for c in PALETTE if math.dist(PALETTE[c], PALETTE[background]) >= _MIN_OBJECT_CONTRAST]
    colours = rng.choice(contrasting, size=int(rng.integers(1, 4)), replace=False).tolist()
    objects = [_draw_object(rng, colour, shot_s, pan, width, height) for colour in colours]
    objects.sort(key=lambda obj: obj.start_xy)  # left to right: the order captions name them in
    return ShotSpec(duration_s=shot_s, background=background, pattern=pattern, pan_xy=pan, objects=objects)


def _shot_lengths(
    rng: np.random.Generator, fps: int, max_shots: int, duration_range: tuple[float, float]
) -> list[float]:
    step = next(s for s in _TIME_STEPS if (s * fps).is_integer())
    total_steps = max(1, round(rng.uniform(*duration_range) / step))
    n_shots = min(int(rng.integers(1, max_shots + 1)), total_steps)
    weights = rng.uniform(0.7, 1.3, n_shots)
    steps = 1 + np.floor(weights / weights.sum() * (total_steps - n_shots)).astype(int)  # >= 1 step each
    steps[-1] = total_steps - steps[:-1].sum()
    return [round(int(k) * step, 6) for k in steps]


def random_spec(
    rng: np.random.Generator,
    width: int = 320,
    height: int = 240,
    fps: int = 24,
    max_shots: int = 2,
    duration_range: tuple[float, float] = (2.0, 4.0),
) -> VideoSpec:
    """Draw a random valid video: objects on screen, contrasting with their background, clearly cut shots.

    Args:
        rng: the generator; one integer is drawn from it, and every choice is then drawn from
            ``np.random.default_rng(seed)`` with that integer recorded as ``VideoSpec.seed``.
        width, height: frame size in pixels (even).
        fps: frames per second; shot lengths are whole numbers of frames.
        max_shots: the number of shots is uniform in 1..max_shots.
        duration_range: the total duration is uniform in this range (in seconds), rounded to a frame-aligned
            step of at most 1 s.

    Returns:
        A ``VideoSpec`` whose consecutive shots differ in background colour and pattern, and whose cuts a
        scene-cut detector finds (frames either side of a cut differ by at least ``_MIN_CUT_SCORE``).
    """
    seed = int(rng.integers(2**32))
    rng = np.random.default_rng(seed)
    shots: list[ShotSpec] = []
    for shot_s in _shot_lengths(rng, fps, max_shots, duration_range):
        shot = _draw_shot(rng, shot_s, shots[-1] if shots else None, width, height)
        if shots:
            last_HWC = render_shot(shots[-1], shots[-1].duration_s - 1 / fps, width, height)
            for _ in range(_MAX_DRAWS):
                if _cut_score(last_HWC, render_shot(shot, 0.0, width, height)) >= _MIN_CUT_SCORE:
                    break
                shot = _draw_shot(rng, shot_s, shots[-1], width, height)
            else:
                raise RuntimeError(f"no clearly different shot found in {_MAX_DRAWS} draws (seed {seed})")
        shots.append(shot)
    return VideoSpec(width=width, height=height, fps=fps, shots=shots, seed=seed)


def _ground_truth(spec: VideoSpec) -> dict[str, object]:
    return {
        "spec": spec.model_dump(mode="json"),
        "shots": [{"start_s": start, "end_s": end} for start, end in spec.shot_times],
        "n_frames": spec.n_frames,
        "duration_s": spec.duration_s,
        "reference_caption": reference_caption(spec),
        "reference_structured": [caption.model_dump(mode="json") for caption in video_captions(spec)],
        "world_version": WORLD_VERSION,
    }


def _encode(spec: VideoSpec, path: Path, codec: str) -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is not on PATH; synthetic videos need it to encode")
    size, fps = f"{spec.width}x{spec.height}", spec.fps
    args = f"-f rawvideo -pix_fmt rgb24 -s {size} -r {fps} -i - -an -c:v {codec} -pix_fmt yuv420p -g {fps}"
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *args.split(), str(path)]
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a chatty ffmpeg cannot block the writer
        # Leaving the Popen block closes stdin (ffmpeg then finishes the file) and waits for the exit.
        with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr) as proc:
            assert proc.stdin is not None
            try:
                for frame_HWC in render_frames(spec):
                    proc.stdin.write(frame_HWC.tobytes())
            except BrokenPipeError:
                pass  # ffmpeg exited early; its exit status and stderr below say why
        if proc.returncode != 0:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace")[-2000:].strip()
            raise RuntimeError(f"ffmpeg failed (exit {proc.returncode}) writing {path}: {tail}")


def write_video(spec: VideoSpec, path: Path, codec: str = "libx264") -> Path:
    """Encode the video with ffmpeg and write its ground truth next to it as ``<stem>.json``.

    Both files are written under temporary names and renamed when complete.

    Args:
        spec: the video to render.
        path: where the video goes; its suffix picks the container (e.g. ``.mp4``).
        codec: the ffmpeg video encoder; the output is yuv420p with a keyframe every second.

    Returns:
        ``path``.

    Raises:
        RuntimeError: ffmpeg is missing or fails (the message ends with its stderr).
    """
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        _encode(spec, partial, codec)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    truth, partial_truth = path.with_suffix(".json"), path.with_name(f".{path.stem}.partial.json")
    partial_truth.write_text(json.dumps(_ground_truth(spec), indent=2) + "\n")
    partial_truth.replace(truth)
    return path


def synthesize(
    out_dir: Path,
    n: int,
    seed: int = 0,
    width: int = 320,
    height: int = 240,
    fps: int = 24,
    max_shots: int = 2,
) -> list[Path]:
    """Write ``n`` random videos ``video_000.mp4`` ... with their ``.json`` ground truth into ``out_dir``.

    Args:
        out_dir: created if missing; existing files of the same names are replaced.
        n: how many videos.
        seed: the same seed gives the same specs, hence identical JSON files.
        width, height, fps, max_shots: passed to ``random_spec``.

    Returns:
        The video paths in order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    specs = [random_spec(rng, width=width, height=height, fps=fps, max_shots=max_shots) for _ in range(n)]
    return [write_video(spec, out_dir / f"video_{i:03d}.mp4") for i, spec in enumerate(specs)]
