"""Running ffprobe/ffmpeg as bounded subprocesses, and reading what they say.

ffmpeg-python builds the filter graphs (see ``stages/decode.py``); the processes themselves are started here
with ``subprocess`` so that a timeout really kills the child (``ffmpeg.probe`` leaves it running) and so that
extra output pipes can be passed to ffmpeg.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from fractions import Fraction
from typing import Any

_PIX_FMT_DEPTH = re.compile(r"p(\d{2})(?:le|be)$")
_LOG_PREFIX = re.compile(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*")


class MediaError(Exception):
    """ffprobe/ffmpeg could not read a file. ``reason`` is a one-line, user-facing explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def require_ffmpeg() -> None:
    """Raise RuntimeError with an install hint when ffmpeg/ffprobe are not on PATH."""
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found on PATH: install ffmpeg (Debian/Ubuntu: "
            "`sudo apt-get install ffmpeg`, or run `make setup`)"
        )


def stderr_tail(stderr: bytes | str, lines: int = 2) -> str:
    """The last non-empty lines of a tool's stderr, joined into one line."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    kept: list[str] = []
    for raw in text.splitlines():
        line = _LOG_PREFIX.sub("", raw.strip())
        if line and line not in kept:
            kept.append(line)
    return " | ".join(kept[-lines:]) or "no error message"


def ffprobe(path: str, timeout_s: float) -> dict[str, Any]:
    """Return ffprobe's ``-show_format -show_streams`` JSON for ``path``.

    Raises:
        MediaError: ffprobe failed, timed out, or printed something that is not JSON.
    """
    cmd = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", "-i", path]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"ffprobe timed out after {timeout_s:g} s") from exc
    if done.returncode != 0:
        raise MediaError(f"undecodable header: {stderr_tail(done.stderr)}")
    try:
        info: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise MediaError(f"ffprobe printed invalid JSON: {exc}") from exc
    return info


def parse_rate(text: str | None) -> float:
    """``"30000/1001"`` -> 29.97; ``"0/0"``, empty or malformed -> 0.0."""
    if not text:
        return 0.0
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        return 0.0


def parse_float(value: object) -> float:
    """ffprobe numbers arrive as strings and may be ``"N/A"``; those become 0.0."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def display_rotation(stream: dict[str, Any]) -> int:
    """Clockwise display rotation (0/90/180/270) from the display matrix or the legacy ``rotate`` tag."""
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return round(-parse_float(side["rotation"])) % 360
    return round(parse_float(stream.get("tags", {}).get("rotate", 0))) % 360


def bit_depth(stream: dict[str, Any]) -> int:
    """Bits per sample of a video stream (from ``bits_per_raw_sample``, else the pixel format name)."""
    raw = int(parse_float(stream.get("bits_per_raw_sample")))
    if raw > 0:
        return raw
    match = _PIX_FMT_DEPTH.search(stream.get("pix_fmt", ""))
    return int(match.group(1)) if match else 8
