"""Running ffprobe/ffmpeg as bounded subprocesses, and reading what they say.

ffmpeg-python builds the filter graphs (see ``stages/decode.py``); the processes themselves are started here
with ``subprocess`` so that a timeout really kills the child (``ffmpeg.probe`` leaves it running) and so that
extra output pipes can be passed to ffmpeg.

Every ffmpeg/ffprobe call that reads an input passes ``INPUT_OPTIONS`` before its ``-i``: ffmpeg then reads
the named file and nothing that file points to (see ``SAFE_DEMUXERS``), and ``ffprobe`` turns a refusal into
a ``MediaError`` that says what the input really is.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path, PurePath
from typing import Any

import numpy as np

_PIX_FMT_DEPTH = re.compile(r"p(\d{2})(?:le|be)$")
_LOG_PREFIX = re.compile(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*")
_FORMAT_REFUSED = re.compile(r"^\[(\w+) @ 0x[0-9a-f]+\] Format not on whitelist", re.MULTILINE)
_PROTOCOL_REFUSED = re.compile(r"Protocol '([^']+)' not on whitelist")

# Demuxers that read one picture from one file; the probe takes them as stills. GIF and APNG have demuxers of
# their own and are videos.
STILL_DEMUXERS = ("png_pipe", "jpeg_pipe", "bmp_pipe", "tiff_pipe", "webp_pipe", "ppm_pipe")
# The demuxers ffmpeg may pick for an input: containers and streams that hold all their media in the file
# itself, checked against `ffmpeg -demuxers` of ffmpeg 5.1. One name admits a demuxer with several ("mov"
# is mov,mp4,m4a,3gp,3g2,mj2; "matroska" is matroska,webm). Audio containers are here so that an audio file
# is refused later, for having no video stream. Left out on purpose, because they open further files or URLs
# named inside the input: hls, dash, webm_dash_manifest, imf, concat (ffconcat lists), image2 (which expands
# "img%03d.png" into a sequence of other files), sdp/rtp/rtsp; left out too: lavfi, avisynth and
# vapoursynth (programs, not media), tty and bin (they draw any text file as video), and every device
# grabber. mov follows data references (drefs) only with its enable_drefs option, which stays off.
SAFE_DEMUXERS = (
    "mov", "matroska", "avi", "flv", "mpegts", "mpeg", "mpegvideo", "ogg", "asf", "mxf", "nut", "ivf", "dv",
    "yuv4mpegpipe", "h264", "hevc", "m4v", "mjpeg", "gif", "apng", *STILL_DEMUXERS,
    "wav", "mp3", "flac", "aac", "ac3", "eac3", "aiff",
)  # fmt: skip
# Options for every input ffmpeg reads (before its -i; ffmpeg-python: ffmpeg.input(path, **INPUT_OPTIONS)):
# the file protocol only, and only the demuxers above.
INPUT_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": ",".join(SAFE_DEMUXERS)}
# Some picture files (JPEGs as PIL writes them, .tga, ...) are only recognised by image2. Told not to expand
# patterns, image2 reads exactly the one named file: such stills are opened with these options instead (a name
# that IS a pattern, "img%03d.png", is still refused).
IMAGE2_OPTIONS = {
    "protocol_whitelist": "file",
    "format_whitelist": "image2",
    "f": "image2",
    "pattern_type": "none",
}
_REFERENCE_DEMUXERS = {"hls", "dash", "webm_dash_manifest", "imf", "concat", "sdp", "rtp", "rtsp"}
_TEXT_DEMUXERS = {"tty", "bin"}


class MediaError(Exception):
    """ffprobe/ffmpeg could not read a file. ``reason`` is a one-line, user-facing explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MissingToolError(RuntimeError):
    """A program the library runs (ffmpeg, ffprobe) is not installed; the message says how to install it."""


def require_ffmpeg() -> None:
    """Raise ``MissingToolError`` with an install hint when ffmpeg/ffprobe are not on PATH."""
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        raise MissingToolError(
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


def input_options(container: str | None = None) -> dict[str, str]:
    """The ffmpeg input options for a file whose probe found ``container`` (None: not probed yet)."""
    return IMAGE2_OPTIONS if container == "image2" else INPUT_OPTIONS


def input_args(container: str | None = None) -> list[str]:
    """``input_options(container)`` as command-line arguments, to put before an ``-i``."""
    return [arg for key, value in input_options(container).items() for arg in (f"-{key}", value)]


def refusal(stderr: bytes | str, path: str) -> str | None:
    """Why ffmpeg refused to open ``path`` under ``INPUT_OPTIONS``, from its stderr; None if it did not."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    if found := _FORMAT_REFUSED.search(text):
        return _format_refusal(found.group(1), path)
    if found := _PROTOCOL_REFUSED.search(text):
        protocol = found.group(1)
        return f"refers to another resource through the {protocol!r} protocol; only the named file is read"
    return None


def _format_refusal(demuxer: str, path: str) -> str:
    if demuxer in _REFERENCE_DEMUXERS:
        return f"a playlist or reference file ({demuxer}), not a self-contained video"
    if demuxer in _TEXT_DEMUXERS:
        return "text file, not a video"
    if demuxer == "image2" and "%" in PurePath(path).name:
        return "an image-sequence pattern name (image2 would read the numbered files it names), not one file"
    # Random or damaged bytes often look like some text format ffmpeg knows (lrc, srt, ...).
    return f"undecodable header: ffmpeg takes it for {demuxer!r}, not a self-contained video format read here"


def ffprobe(path: str, timeout_s: float) -> dict[str, Any]:
    """Return ffprobe's ``-show_format -show_streams`` JSON for ``path``, read under ``INPUT_OPTIONS``.

    Raises:
        MediaError: ffprobe failed, timed out, refused the input (a playlist, a reference to other files or
            URLs, a format not in ``SAFE_DEMUXERS``), or printed something that is not JSON.
    """
    done = _ffprobe(path, timeout_s, None)
    found = _FORMAT_REFUSED.search(done.stderr.decode("utf-8", "replace")) if done.returncode else None
    if found and found.group(1) == "image2" and "%" not in PurePath(path).name:
        done = _ffprobe(path, timeout_s, "image2")  # a picture only image2 knows: the one file, no pattern
    if done.returncode != 0:
        raise MediaError(refusal(done.stderr, path) or f"undecodable header: {stderr_tail(done.stderr)}")
    try:
        info: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise MediaError(f"ffprobe printed invalid JSON: {exc}") from exc
    return info


def _ffprobe(path: str, timeout_s: float, container: str | None) -> subprocess.CompletedProcess[bytes]:
    cmd = ["ffprobe", "-v", "error", *input_args(container), "-show_format", "-show_streams", "-of", "json"]
    try:
        return subprocess.run([*cmd, "-i", path], capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"ffprobe timed out after {timeout_s:g} s") from exc


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


def write_mp4(frames_THWC: np.ndarray, path: Path, fps: float) -> Path:
    """H.264 mp4 through ffmpeg (sizes padded to even numbers, as yuv420p needs)."""
    _, h, w, _ = frames_THWC.shape
    cmd = [
        "ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
        "-r", f"{fps:g}", "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264",
        "-pix_fmt", "yuv420p", str(path),
    ]  # fmt: skip
    subprocess.run(cmd, input=np.ascontiguousarray(frames_THWC).tobytes(), check=True)
    return path
