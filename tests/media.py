"""Test clips made with ffmpeg's lavfi sources: good ones in many encodings, and broken inputs.

Every good clip comes with the facts a correct probe must report (display size after rotation, duration).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GoodClip:
    path: Path
    width: int
    height: int
    duration_s: float
    codec: str
    vfr: bool = False
    rotation: int = 0
    bit_depth: int = 8
    has_audio: bool = False


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _src(size: str, d: float, rate: int = 25, kind: str = "testsrc2") -> list[str]:
    return ["-f", "lavfi", "-i", f"{kind}=size={size}:rate={rate}:d={d}"]


def make_good_clips(root: Path) -> dict[str, GoodClip]:
    """Encode the matrix of good clips under ``root`` (about 3 s on 2 cores)."""
    root.mkdir(parents=True, exist_ok=True)
    x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    clips: dict[str, GoodClip] = {}

    p = root / "h264_audio.mp4"
    ffmpeg(
        *_src("320x240", 3),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:d=3",
        *x264,
        "-c:a",
        "aac",
        "-shortest",
        str(p),
    )
    clips["h264_audio"] = GoodClip(p, 320, 240, 3.0, "h264", has_audio=True)

    p = root / "hevc10.mp4"
    ffmpeg(
        *_src("256x144", 2),
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "log-level=error",
        "-pix_fmt",
        "yuv420p10le",
        "-tag:v",
        "hvc1",
        str(p),
    )
    clips["hevc10"] = GoodClip(p, 256, 144, 2.0, "hevc", bit_depth=10)

    p = root / "vp9.webm"
    ffmpeg(
        *_src("320x180", 2),
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "300k",
        str(p),
    )
    clips["vp9"] = GoodClip(p, 320, 180, 2.0, "vp9")

    p = root / "mjpeg_odd.avi"
    ffmpeg(
        *_src("321x239", 2),
        "-vf",
        "scale=321:239",
        "-c:v",
        "mjpeg",
        "-pix_fmt",
        "yuvj444p",
        "-q:v",
        "5",
        str(p),
    )
    clips["mjpeg_odd"] = GoodClip(p, 321, 239, 2.0, "mjpeg")

    p = root / "prores.mov"
    ffmpeg(*_src("320x240", 2), "-c:v", "prores_ks", "-profile:v", "0", str(p))
    clips["prores"] = GoodClip(p, 320, 240, 2.0, "prores", bit_depth=10)

    p = root / "portrait.mp4"
    ffmpeg(*_src("180x320", 2), *x264, str(p))
    clips["portrait"] = GoodClip(p, 180, 320, 2.0, "h264")

    plain = root / "landscape_for_rotation.mp4"
    ffmpeg(*_src("320x240", 2, rate=30), *x264, str(plain))
    p = root / "rotated.mp4"
    ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(p))
    plain.unlink()
    clips["rotated"] = GoodClip(p, 240, 320, 2.0, "h264", rotation=270)

    # First 2 s at 30 fps, next 2 s at 10 fps: timestamps are irregular, so the stream is VFR.
    p = root / "vfr.mp4"
    ffmpeg(
        *_src("320x240", 4, rate=30),
        "-vf",
        r"select='lt(n\,60)+not(mod(n\,3))'",
        "-fps_mode",
        "vfr",
        *x264,
        str(p),
    )
    clips["vfr"] = GoodClip(p, 320, 240, 4.0, "h264", vfr=True)
    return clips


def concat_shots(path: Path, *lavfi_sources: str) -> Path:
    """Join lavfi sources (e.g. ``"color=red:size=64x64:rate=25:d=1"``) with hard cuts into one h264 file."""
    inputs = [arg for src in lavfi_sources for arg in ("-f", "lavfi", "-i", src)]
    joined = "".join(f"[{i}]" for i in range(len(lavfi_sources))) + f"concat=n={len(lavfi_sources)}:v=1"
    x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    ffmpeg(*inputs, "-filter_complex", joined, *x264, str(path))
    return path


def make_scene_cut_clip(path: Path, first_s: float = 3.0, second_s: float = 4.0) -> Path:
    """Two visually unrelated shots joined by a hard cut at ``first_s``."""
    return concat_shots(
        path, f"testsrc=size=320x240:rate=25:d={first_s}", f"smptebars=size=320x240:rate=25:d={second_s}"
    )


def make_images(root: Path) -> dict[str, Path]:
    """One 64x48 still picture (a testsrc2 frame) per image format the probe takes as a one-frame video."""
    root.mkdir(parents=True, exist_ok=True)
    images = {}
    for name, suffix in [("png", "png"), ("jpeg", "jpg"), ("bmp", "bmp"), ("tiff", "tiff"), ("webp", "webp"),
                         ("ppm", "ppm")]:  # fmt: skip
        images[name] = root / f"still.{suffix}"
        ffmpeg(*_src("64x48", 1), "-frames:v", "1", str(images[name]))
    return images


def make_world_stills(root: Path, seed: int = 3) -> dict[str, Path]:
    """The first frame of a random world shot (320x240) as a png and a jpeg: stills of what the shipped
    captioner was trained on."""
    import numpy as np
    from PIL import Image

    from dataengine.world.generate import random_spec
    from dataengine.world.render import render_shot

    root.mkdir(parents=True, exist_ok=True)
    spec = random_spec(np.random.default_rng(seed), fps=8, max_shots=1)
    picture = Image.fromarray(render_shot(spec.shots[0], 0.0, spec.width, spec.height).astype(np.uint8))
    stills = {"png": root / "world.png", "jpeg": root / "world.jpg"}
    for path in stills.values():
        picture.save(path)
    return stills


def make_animations(root: Path) -> dict[str, Path]:
    """Animated GIF and WebP (ten 64x48 frames at 10 fps): not still images, whatever their demuxer."""
    root.mkdir(parents=True, exist_ok=True)
    animations = {"gif": root / "animated.gif", "webp": root / "animated.webp"}
    ffmpeg(*_src("64x48", 1, rate=10), str(animations["gif"]))
    ffmpeg(*_src("64x48", 1, rate=10), "-loop", "0", str(animations["webp"]))
    return animations


def make_broken_inputs(root: Path, good: Path) -> dict[str, Path]:
    """Inputs that must each be recorded as a failure with a reason. ``good`` is an mp4 to damage."""
    root.mkdir(parents=True, exist_ok=True)
    broken: dict[str, Path] = {}
    broken["zero_bytes"] = root / "empty.mp4"
    broken["zero_bytes"].write_bytes(b"")
    data = good.read_bytes()  # moov atom at the end: cutting the file loses the header
    broken["truncated"] = root / "truncated.mp4"
    broken["truncated"].write_bytes(data[: len(data) // 3])
    broken["random_bytes"] = root / "random.mp4"
    broken["random_bytes"].write_bytes(os.urandom(64 * 1024))
    broken["text_file"] = root / "notes.txt"
    broken["text_file"].write_text("not a video, just some notes\n" * 50)
    broken["audio_only"] = root / "tone.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:d=2", "-c:a", "aac", str(broken["audio_only"]))
    broken["directory"] = root / "a_directory.mp4"
    broken["directory"].mkdir(exist_ok=True)
    broken["dangling_symlink"] = root / "dangling.mp4"
    if not broken["dangling_symlink"].is_symlink():
        broken["dangling_symlink"].symlink_to(root / "does_not_exist.mp4")
    broken["missing"] = root / "never_created.mp4"
    broken["huge_header"] = root / "huge.y4m"  # a header that claims 65535x65535
    broken["huge_header"].write_bytes(
        b"YUV4MPEG2 W65535 H65535 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\0" * 4096
    )
    broken["over_limit"] = root / "big.y4m"  # 10000x10000: valid for ffmpeg, over our 8192 default limit
    broken["over_limit"].write_bytes(
        b"YUV4MPEG2 W10000 H10000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\0" * 4096
    )
    return broken


def make_truncated_midstream(good: Path, out: Path) -> Path:
    """A faststart mp4 cut after its header: probes fine, then decoding runs out of data mid-way."""
    faststart = out.with_name("faststart_" + good.name)
    ffmpeg("-i", str(good), "-c", "copy", "-movflags", "+faststart", str(faststart))
    data = faststart.read_bytes()
    out.write_bytes(data[: len(data) // 3])
    faststart.unlink()
    return out
