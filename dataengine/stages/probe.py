"""Probe: read a source's container and first video stream with ffprobe, or say why it cannot be used.

Source --> Video | Failure(stage="probe"). Remote sources are fetched to a local cache first. Every check runs
on header facts before anything is decoded, so a header claiming 65535x65535 is refused without allocating.

Still images (png, jpeg, bmp, tiff, webp, ppm) become one-frame videos (``ProbeInfo.is_image``) unless
``images=False``; animated GIF and WebP are not stills and take the video path.

ffprobe reads the named file and nothing it points to (``media.INPUT_OPTIONS``): an HLS playlist, an ffconcat
list or an image-sequence pattern name is a failure that says so, whatever its extension, and so is a remote
source's fetched copy.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import Field

from dataengine.inputs import InputsConfig, fetch
from dataengine.media import (
    STILL_DEMUXERS,
    MediaError,
    bit_depth,
    display_rotation,
    ffprobe,
    parse_float,
    parse_rate,
)
from dataengine.records import Failure, ProbeInfo, Source, Video
from dataengine.stages.base import Config, Stage


class _Timing(NamedTuple):
    duration_s: float
    avg_fps: float
    r_fps: float
    n_frames: int
    n_frames_exact: bool


# The one-frame-video convention for stills (see ProbeInfo): one exact frame, a nominal second at 1 fps.
_IMAGE_TIMING = _Timing(duration_s=1.0, avg_fps=1.0, r_fps=1.0, n_frames=1, n_frames_exact=True)


class ProbeConfig(Config):
    timeout_s: float = Field(30.0, gt=0, description="ffprobe wall-clock limit per file")
    max_width: int = Field(8192, ge=1)
    max_height: int = Field(8192, ge=1)
    max_pixels: int = Field(8192 * 4352, ge=1, description="width x height limit (8K fits)")
    max_duration_s: float = Field(6 * 3600.0, gt=0)
    max_fps: float = Field(480.0, gt=0)
    max_file_bytes: int | None = Field(None, ge=1, description="None: no limit")
    images: bool = Field(
        True,
        description="still images become one-frame videos (is_image, n_frames=1, nominal 1 s at 1 fps); "
        "False: they are failures",
    )
    fetch: InputsConfig = Field(default_factory=InputsConfig, description="how remote sources are fetched")


class ProbeStage(Stage[Source, Video]):
    name = "probe"
    input_type = Source
    output_type = Video
    config: ProbeConfig

    def __init__(self, config: ProbeConfig | None = None) -> None:
        super().__init__(config or ProbeConfig())

    def process_batch(self, batch: Sequence[Source]) -> list[Video | Failure]:
        return [self.probe(source) for source in batch]

    def probe(self, source: Source) -> Video | Failure:
        """Probe one source; every problem with the input becomes a ``Failure``."""
        try:
            path = fetch(source, self.config.fetch)
        except OSError as exc:
            return Failure.of(source, "probe", f"fetch failed: {exc}")
        try:
            size = _regular_file_size(path)
            if self.config.max_file_bytes is not None and size > self.config.max_file_bytes:
                raise MediaError(f"file is {size} bytes, over the limit of {self.config.max_file_bytes}")
            facts = self._facts(ffprobe(str(path), self.config.timeout_s), path, size)
        except MediaError as exc:
            return Failure.of(source, "probe", exc.reason)
        return Video(uri=source.uri, video_id=source.video_id, path=str(path), probe=facts)

    def _facts(self, info: dict[str, Any], path: Path, size: int) -> ProbeInfo:
        fmt = info.get("format", {})
        stream = _first_video_stream(info)
        container = str(fmt.get("format_name", "unknown"))
        is_image = _is_still(container, path)
        if is_image and not self.config.images:
            raise MediaError(f"still image ({stream.get('codec_name')}), not a video")
        coded_w, coded_h = int(stream.get("width") or 0), int(stream.get("height") or 0)
        self._check_size(coded_w, coded_h)
        timing = _IMAGE_TIMING if is_image else self._timing(stream, fmt)
        rotation = display_rotation(stream)
        width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
        return ProbeInfo(
            **timing._asdict(),
            width=width,
            height=height,
            rotation=rotation,
            codec=str(stream.get("codec_name", "unknown")),
            pix_fmt=str(stream.get("pix_fmt", "unknown")),
            bit_depth=bit_depth(stream),
            is_vfr=abs(timing.avg_fps - timing.r_fps) > 0.01 * timing.r_fps,
            has_audio=any(s.get("codec_type") == "audio" for s in info.get("streams", [])),
            container=container,
            size_bytes=size,
            is_image=is_image,
        )

    def _timing(self, stream: dict[str, Any], fmt: dict[str, Any]) -> _Timing:
        """Duration, frame rates and frame count of a video stream, checked against the limits."""
        duration = parse_float(stream.get("duration")) or parse_float(fmt.get("duration"))
        if duration <= 0:
            raise MediaError("zero duration: the stream has no playable length")
        if duration > self.config.max_duration_s:
            raise MediaError(
                f"duration {duration:.1f} s is over the limit of {self.config.max_duration_s:g} s"
            )
        n_frames = int(parse_float(stream.get("nb_frames")))
        avg_fps = parse_rate(stream.get("avg_frame_rate")) or (n_frames / duration)
        r_fps = parse_rate(stream.get("r_frame_rate")) or avg_fps
        if not 0 < avg_fps <= self.config.max_fps:
            raise MediaError(
                f"frame rate {avg_fps:.3f} is unknown or over the limit of {self.config.max_fps:g}"
            )
        return _Timing(duration, avg_fps, r_fps, n_frames or max(1, round(duration * avg_fps)), n_frames > 0)

    def _check_size(self, width: int, height: int) -> None:
        cfg = self.config
        if width <= 0 or height <= 0:
            raise MediaError(f"invalid frame size {width}x{height}")
        if width > cfg.max_width or height > cfg.max_height or width * height > cfg.max_pixels:
            raise MediaError(
                f"frame size {width}x{height} is over the limits "
                f"({cfg.max_width}x{cfg.max_height}, {cfg.max_pixels} pixels)"
            )


def _regular_file_size(path: Path) -> int:
    """Size of a non-empty regular file, or a MediaError that says what the path is instead."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        if path.is_symlink():
            raise MediaError(f"dangling symlink: target {path.readlink()} does not exist") from exc
        raise MediaError("missing file: no such file or directory") from exc
    except PermissionError as exc:
        raise MediaError("permission denied") from exc
    if stat.S_ISDIR(mode):
        raise MediaError("not a regular file: it is a directory")
    if not stat.S_ISREG(mode):
        raise MediaError("not a regular file (device, pipe or socket)")
    size = path.stat().st_size
    if size == 0:
        raise MediaError("empty file (0 bytes)")
    return size


def _is_still(container: str, path: Path) -> bool:
    """Whether ffprobe's ``container`` holds one picture: an image demuxer, and not an animated WebP (whose
    header says RIFF....WEBPVP8X with bit 1 of the flags byte set)."""
    if container not in (*STILL_DEMUXERS, "image2"):  # image2: read as one file (media.IMAGE2_OPTIONS)
        return False
    if container != "webp_pipe":
        return True
    with path.open("rb") as f:
        head = f.read(21)
    return not (len(head) == 21 and head[8:16] == b"WEBPVP8X" and head[20] & 0x02)


def _first_video_stream(info: dict[str, Any]) -> dict[str, Any]:
    streams = info.get("streams", [])
    for stream in streams:
        if stream.get("codec_type") == "video" and not stream.get("disposition", {}).get("attached_pic"):
            stream_info: dict[str, Any] = stream
            return stream_info
    kinds = sorted({str(s.get("codec_type")) for s in streams})
    found = f"found: {', '.join(kinds)}" if kinds else "no streams at all"
    raise MediaError(f"no video stream ({found})")
