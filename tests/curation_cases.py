"""Test clips for curation: one per thing a filter or a duplicate check must tell apart (~3 s, 2 idle cores).

The moving content is rendered here with numpy and OpenCV (a camera panning over a sharp, textured picture,
with an object crossing it), so that no clip carries text except ``text``: ffmpeg's ``testsrc`` draws digits,
which a text detector rightly finds. The other cases are made from it with ffmpeg filters. All clips are
4 s, 320x240 (``reencoded``: 240x180), h264.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dataengine.records import Clip, DecodedClip, Source, Video
from dataengine.stages import DecodeConfig, DecodeStage, ProbeStage, ViewConfig

WIDTH, HEIGHT, SECONDS = 320, 240, 4.0
FPS = 20
FLASH_FPS = 24  # the strobe's period (8 frames) is a whole number of frames at this rate
LETTERBOX_ACTIVE = 0.6  # share of the frame the letterboxed picture covers
CAPTIONS = ("BREAKING NEWS", "Live from the city", "Tonight at nine")
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
CAPTION_VIEW = ViewConfig(fps=2, max_frames=8, resize="short_side", size=112)  # as the demo decodes captions


def make_cases(directory: Path) -> dict[str, Path]:
    """Write every case under ``directory`` (a case whose file exists is kept) and return name -> path.

    ``moving``: sharp texture, panning at ~0.19 short sides per second, no text. ``static``: its first frame,
    held. ``still``: that frame as a PNG (a one-frame input). ``black``: all black. ``fade``: ``moving``
    fading in from black over its first 2 s. ``flash``: ``moving`` at 24 fps with a full-frame white strobe
    at 3 Hz (3 of every 8 frames white). ``text``: ``moving`` with large captions on every frame.
    ``letterbox``: ``moving`` squeezed into the middle 60% of the height, black bars above and below.
    ``blurry``: ``moving`` under a Gaussian blur (sigma 6). ``reencoded``: ``moving`` at 0.75x size and
    ~60 kbit/s. ``cropped``: the centre 90% of ``moving`` scaled back to full size. ``different``: other
    texture, other motion.
    """
    directory.mkdir(parents=True, exist_ok=True)
    moving = directory / "moving.mp4"
    makers: dict[str, tuple[str, Callable[[Path], object]]] = {
        "moving": ("mp4", lambda p: _write(_panning(0, FPS), p, FPS)),
        "static": ("mp4", lambda p: _write(np.repeat(_panning(0, FPS)[:1], FPS * 4, axis=0), p, FPS)),
        "still": ("png", lambda p: Image.fromarray(_panning(0, FPS)[0]).save(p, format="png")),
        "black": (
            "mp4",
            lambda p: _ffmpeg("-f", "lavfi", "-i", f"color=black:s={WIDTH}x{HEIGHT}:r={FPS}:d=4", p),
        ),
        "fade": ("mp4", lambda p: _derive(moving, "fade=t=in:st=0:d=2", p)),
        "flash": ("mp4", lambda p: _write(_strobe(_panning(0, FLASH_FPS)), p, FLASH_FPS)),
        "text": ("mp4", lambda p: _write(_captioned(_panning(0, FPS)), p, FPS)),
        "letterbox": ("mp4", lambda p: _derive(moving, _letterbox_filter(), p)),
        "blurry": ("mp4", lambda p: _derive(moving, "gblur=sigma=6", p)),
        "reencoded": ("mp4", lambda p: _derive(moving, "scale=240:180", p, "-b:v", "60k")),
        "cropped": ("mp4", lambda p: _derive(moving, f"crop=iw*0.9:ih*0.9,scale={WIDTH}:{HEIGHT}", p)),
        "different": ("mp4", lambda p: _write(_panning(7, FPS, (-1.0, 1.5)), p, FPS)),
    }
    paths: dict[str, Path] = {}
    for name, (ext, make) in makers.items():
        path = directory / f"{name}.{ext}"
        if not path.exists():
            tmp = directory / f".{name}.tmp.{ext}"  # renamed when complete: an interrupted run leaves no case
            make(tmp)
            tmp.replace(path)
        paths[name] = path
    return paths


def _ffmpeg(*args: str | Path) -> None:
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args[:-1]), *X264, str(args[-1])]
    subprocess.run(cmd, check=True)


def _write(frames_THWC: np.ndarray, out: Path, fps: int) -> None:
    _, h, w, _ = frames_THWC.shape
    raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
    cmd = ["ffmpeg", "-loglevel", "error", "-y", *raw, *X264, str(out)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames_THWC).tobytes(), check=True)


def _derive(source: Path, video_filter: str, out: Path, *extra: str) -> None:
    _ffmpeg("-i", source, "-vf", video_filter, *extra, out)


def _letterbox_filter() -> str:
    active = round(HEIGHT * LETTERBOX_ACTIVE / 2) * 2
    return f"scale={WIDTH}:{active},pad={WIDTH}:{HEIGHT}:0:{(HEIGHT - active) // 2}:black"


@cache
def _texture(seed: int, height: int, width: int) -> np.ndarray:
    """A sharp colour picture: noise at several scales, plus hard-edged discs and bars, as uint8 RGB."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((64, 0.5), (16, 0.3), (4, 0.2)):
        coarse = rng.random((height // cell + 2, width // cell + 2, 3), dtype=np.float32)
        canvas += weight * cv2.resize(coarse, (width + 2 * cell, height + 2 * cell))[:height, :width]
    canvas = (canvas * 255).astype(np.uint8)
    for _ in range(60):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            cv2.circle(canvas, (x, y), int(rng.integers(6, 30)), colour, -1, cv2.LINE_AA)
        else:
            w, h = int(rng.integers(4, 40)), int(rng.integers(4, 40))
            cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, -1)
    canvas.flags.writeable = False  # cached
    return canvas


@cache
def _panning(seed: int, fps: int, direction: tuple[float, float] = (2.0, 1.0)) -> np.ndarray:
    """``frames_THWC``: a window panning over a texture at ``direction`` x 20 px/s, a disc crossing it."""
    n = int(SECONDS * fps)
    speed = 20.0 * np.asarray(direction)
    reach = np.abs(speed) * SECONDS
    texture = _texture(seed, HEIGHT + int(reach[1]) + 2, WIDTH + int(reach[0]) + 2)
    frames = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
    for i in range(n):
        t = i / fps
        x, y = (speed * t + np.where(speed < 0, reach, 0)).round().astype(int)
        frames[i] = texture[y : y + HEIGHT, x : x + WIDTH]
        centre = (int(WIDTH * (0.1 + 0.2 * t)), int(HEIGHT * (0.7 - 0.1 * t)))
        cv2.circle(frames[i], centre, 18, (250, 240, 30), -1, cv2.LINE_AA)
    frames.flags.writeable = False  # cached: shared by the cases made from it
    return frames


def _strobe(frames_THWC: np.ndarray) -> np.ndarray:
    """White on 3 of every 8 frames (3 Hz at 24 fps), centred on frame 0 of each period."""
    out = frames_THWC.copy()
    out[(np.arange(len(out)) + 1) % 8 < 3] = 255
    return out


def _captioned(frames_THWC: np.ndarray) -> np.ndarray:
    """Large burned-in captions (white on a dark band, as broadcast subtitles are) on every frame."""
    font = ImageFont.load_default(size=30)
    out = np.empty_like(frames_THWC)
    for i, frame in enumerate(frames_THWC):
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        for line, text in enumerate(CAPTIONS):
            y = 20 + 75 * line
            box = draw.textbbox((12, y), text, font=font)
            draw.rectangle((box[0] - 6, box[1] - 6, box[2] + 6, box[3] + 6), fill=(20, 20, 20))
            draw.text((12, y), text, font=font, fill=(255, 255, 255))
        out[i] = np.asarray(image)
    return out


def decode_span(
    path: Path, views: dict[str, ViewConfig] | None = None, start_s: float = 0.0, end_s: float | None = None
) -> DecodedClip:
    """One clip of ``path`` (the whole file by default) through the real probe and decode stages, with
    ``views`` (default: the demo's caption view alone)."""
    video = ProbeStage().probe(Source.from_uri(path))
    assert isinstance(video, Video), video
    decode = DecodeStage(DecodeConfig(views=views or {"caption": CAPTION_VIEW}))
    decoded = decode.decode(Clip.of(video, 0, start_s, video.probe.duration_s if end_s is None else end_s))
    assert isinstance(decoded, DecodedClip), decoded
    return decoded
