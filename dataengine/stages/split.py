"""Split: cut a probed video into clips, by fixed-stride windows or at scene cuts.

Video --> Clip... | Failure(stage="split"). Spans that are too short are not silently lost: each becomes a
``Failure(kind="dropped")`` with its span and the reason, so the manifest accounts for every second. A still
image (``probe.is_image``) is one clip over its nominal duration, whatever the mode and ``min_clip_s``.

Scene cuts come from ffmpeg's ``scdet`` filter on a downscaled copy of the stream, not from PySceneDetect:
it runs inside the ffmpeg binary we already depend on (one decoder, every format ffmpeg reads, no second
decode through OpenCV in Python), costs one fast pass at ~160 px wide, and its score (mean absolute frame
difference, 0-100) is easy to reason about. PySceneDetect's adaptive detector handles slow fades better;
fades are not cuts for our purposes (a fade stays inside one clip window).
"""

from __future__ import annotations

import itertools
import re
import subprocess
from collections.abc import Sequence
from typing import Literal

import ffmpeg
from pydantic import Field, model_validator

from dataengine.media import INPUT_OPTIONS, MediaError, refusal, stderr_tail
from dataengine.records import Clip, Failure, Video
from dataengine.stages.base import Config, Stage

_SCD_TIME = re.compile(r"lavfi\.scd\.time:\s*([0-9.]+)")


class SplitConfig(Config):
    mode: Literal["fixed", "scenes"] = Field("scenes", description="fixed windows, or shots then windows")
    window_s: float = Field(5.0, gt=0, description="window length for fixed mode and for long shots")
    stride_s: float | None = Field(None, gt=0, description="window start step; None = window_s (no overlap)")
    min_clip_s: float = Field(1.0, ge=0, description="shorter spans are dropped with a reason")
    max_clip_s: float = Field(10.0, gt=0, description="longer shots are cut into windows")
    scene_threshold: float = Field(10.0, gt=0, le=100, description="scdet score that counts as a cut")
    scene_width: int = Field(160, ge=16, description="width of the copy scdet analyses")
    timeout_s: float = Field(600.0, gt=0, description="scene-detection wall-clock limit per video")

    @model_validator(mode="after")
    def _consistent(self) -> SplitConfig:
        if not self.min_clip_s <= self.window_s <= self.max_clip_s:
            raise ValueError(
                f"need min_clip_s <= window_s <= max_clip_s, got {self.min_clip_s}, {self.window_s}, "
                f"{self.max_clip_s}"
            )
        return self

    @property
    def stride(self) -> float:
        return self.stride_s or self.window_s


class SplitStage(Stage[Video, Clip]):
    name = "split"
    input_type = Video
    output_type = Clip
    config: SplitConfig

    def __init__(self, config: SplitConfig | None = None) -> None:
        super().__init__(config or SplitConfig())

    def process_batch(self, batch: Sequence[Video]) -> list[Clip | Failure]:
        out: list[Clip | Failure] = []
        for video in batch:
            out.extend(self.split(video))
        return out

    def split(self, video: Video) -> list[Clip | Failure]:
        """Clips of one video in time order, interleaved with the spans dropped for being too short."""
        duration = video.probe.duration_s
        if video.probe.is_image:
            return [Clip.of(video, index=0, start_s=0.0, end_s=duration)]
        if self.config.mode == "fixed":
            return self._clips(video, [(0, s, e) for s, e in _windows(0.0, duration, self.config)])
        try:
            shots = _shots(detect_cuts(video.path, self.config), duration)
        except MediaError as exc:
            return [Failure.of(video, "split", exc.reason)]
        spans: list[tuple[int, float, float]] = []
        for shot_index, (start, end) in enumerate(shots):
            if end - start <= self.config.max_clip_s:
                spans.append((shot_index, start, end))
            else:
                spans.extend((shot_index, s, e) for s, e in _windows(start, end, self.config))
        return self._clips(video, spans)

    def _clips(self, video: Video, spans: list[tuple[int, float, float]]) -> list[Clip | Failure]:
        out: list[Clip | Failure] = []
        for shot, start, end in spans:
            clip = Clip.of(video, index=len(out), start_s=round(start, 3), end_s=round(end, 3), shot=shot)
            if clip.duration_s + 1e-6 < self.config.min_clip_s:
                reason = (
                    f"span of {clip.duration_s:.2f} s is shorter than min_clip_s={self.config.min_clip_s:g}"
                )
                out.append(Failure.of(clip, "split", reason, kind="dropped"))
            else:
                out.append(clip)
        return out


def detect_cuts(path: str, config: SplitConfig) -> list[float]:
    """Times (s) of hard cuts in ``path``'s first video stream, found by ffmpeg ``scdet``.

    Raises:
        MediaError: ffmpeg failed or timed out.
    """
    cmd = (
        ffmpeg.input(path, **INPUT_OPTIONS)
        .video.filter("scale", config.scene_width, -2)
        .filter("scdet", threshold=config.scene_threshold)
        .output("-", format="null")
        .global_args("-hide_banner", "-nostats", "-loglevel", "info")
        .compile()
    )
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=config.timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"scene detection timed out after {config.timeout_s:g} s") from exc
    stderr = done.stderr.decode("utf-8", "replace")
    if done.returncode != 0:
        raise MediaError(refusal(stderr, path) or f"scene detection failed: {stderr_tail(stderr)}")
    return sorted({float(t) for t in _SCD_TIME.findall(stderr)})


def _shots(cuts: list[float], duration: float) -> list[tuple[float, float]]:
    bounds = [0.0, *(t for t in cuts if 0.0 < t < duration), duration]
    return list(itertools.pairwise(bounds))


def _windows(start: float, end: float, config: SplitConfig) -> list[tuple[float, float]]:
    """Windows of ``window_s`` every ``stride`` seconds over [start, end); the last one may be shorter."""
    spans = []
    t = start
    while t < end - 1e-6:
        spans.append((t, min(t + config.window_s, end)))
        if t + config.window_s >= end:
            break
        t += config.stride
    return spans
