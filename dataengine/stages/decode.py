"""Decode: one ffmpeg pass per clip into one ``frames_THWC`` array per requested view.

Clip --> DecodedClip | Failure(stage="decode"). Consumers want different views of the same clip (captioning:
~2 fps, at most 16 frames, ~448 px; latents: higher fps at the VAE's size). All views come from a single
decode of the source: ffmpeg ``split``s the decoded stream, each branch gets its own ``fps`` + ``scale`` (+
``crop``) chain, and each branch writes raw RGB to its own pipe, read here by one thread per view.

Frame selection is by timestamp (ffmpeg's ``fps`` filter with ``round=up``: frame k is the source frame on
screen at ``start + k / fps``), so variable-frame-rate sources give evenly spaced frames; rotation metadata
is applied by ffmpeg's autorotate before the filters; 10-bit and odd-sized sources are converted to 8-bit RGB
by the output pixel format.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import Literal

import ffmpeg
import numpy as np
from pydantic import Field, model_validator

from dataengine.media import stderr_tail
from dataengine.records import Clip, DecodedClip, Failure, Frames, ProbeInfo
from dataengine.stages.base import Stage, StageConfig


class ViewConfig(StageConfig):
    """One way of looking at a clip. Output sizes are computed from the probed (rotated) display size."""

    fps: float | None = Field(2.0, gt=0, description="sampling rate; None = the source's average rate")
    max_frames: int | None = Field(16, ge=1, description="cap; fps is lowered so the whole clip fits")
    resize: Literal["none", "short_side", "fit", "crop"] = Field(
        "short_side",
        description="short_side: short side = size; fit: inside width x height; "
        "crop: cover width x height, centre crop",
    )
    size: int | None = Field(448, ge=1, description="target short side for resize=short_side")
    width: int | None = Field(None, ge=1, description="target width for fit/crop")
    height: int | None = Field(None, ge=1, description="target height for fit/crop")
    multiple_of: int = Field(2, ge=1, description="round short_side/fit sizes to a multiple of this")

    @model_validator(mode="after")
    def _sizes_given(self) -> ViewConfig:
        if self.resize == "short_side" and self.size is None:
            raise ValueError("resize='short_side' needs size")
        if self.resize in ("fit", "crop") and (self.width is None or self.height is None):
            raise ValueError(f"resize={self.resize!r} needs width and height")
        return self


class DecodeConfig(StageConfig):
    views: dict[str, ViewConfig] = Field(
        default_factory=lambda: {"caption": ViewConfig()}, min_length=1, description="view name -> view"
    )
    timeout_s: float = Field(300.0, gt=0, description="ffmpeg wall-clock limit per clip")
    min_frame_ratio: float = Field(
        0.8, gt=0, le=1, description="fewer decoded frames than this share of the expected count is a failure"
    )
    threads: int = Field(0, ge=0, description="ffmpeg decoder threads per clip; 0 = ffmpeg decides")


class DecodeStage(Stage[Clip, DecodedClip]):
    name = "decode"
    input_type = Clip
    output_type = DecodedClip
    config: DecodeConfig

    def __init__(self, config: DecodeConfig | None = None) -> None:
        super().__init__(config or DecodeConfig())

    def process_batch(self, batch: Sequence[Clip]) -> list[DecodedClip | Failure]:
        return [self.decode(clip) for clip in batch]

    def decode(self, clip: Clip) -> DecodedClip | Failure:
        """Decode every view of ``clip`` in one ffmpeg pass; problems with the media become a ``Failure``."""
        plans = {name: _plan(view, clip) for name, view in self.config.views.items()}
        pipes = {name: os.pipe() for name in plans}
        cmd = self.command(clip, {name: f"pipe:{w}" for name, (_, w) in pipes.items()})
        write_fds = [w for _, w in pipes.values()]
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=write_fds,
            )
        finally:
            for fd in write_fds:
                os.close(fd)
        readers = {name: _FrameReader(r, plans[name]) for name, (r, _) in pipes.items()}
        try:
            _, stderr = proc.communicate(timeout=self.config.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return Failure.of(clip, "decode", f"ffmpeg timed out after {self.config.timeout_s:g} s")
        finally:
            for reader in readers.values():
                reader.join()
        if proc.returncode != 0:
            return Failure.of(clip, "decode", f"ffmpeg failed: {stderr_tail(stderr)}")
        views = {}
        for name, reader in readers.items():
            frames = reader.frames()
            problem = self._check_count(name, len(frames.frames_THWC), plans[name])
            if problem:
                return Failure.of(clip, "decode", problem)
            views[name] = frames
        return DecodedClip(clip=clip, views=views)

    def command(self, clip: Clip, targets: Mapping[str, str], fmt: str = "rawvideo") -> list[str]:
        """The single ffmpeg command that decodes every view of ``clip``.

        Args:
            clip: the span to decode.
            targets: view name -> ffmpeg output target (``pipe:N``, or ``-`` with ``fmt="null"``).
            fmt: output format; ``rawvideo`` (RGB24) for decoding, ``null`` to time decoding alone.
        """
        plans = {name: _plan(view, clip) for name, view in self.config.views.items()}
        source = ffmpeg.input(
            clip.path, ss=f"{clip.start_s:.3f}", t=f"{clip.duration_s:.3f}", threads=self.config.threads
        ).video
        branches = source.split() if len(plans) > 1 else None
        outputs = []
        for i, (name, plan) in enumerate(plans.items()):
            stream = branches[i] if branches is not None else source
            stream = stream.filter("fps", fps=f"{plan.fps:.6f}", round="up")
            if (plan.scaled_w, plan.scaled_h) != (clip.probe.width, clip.probe.height):
                stream = stream.filter("scale", plan.scaled_w, plan.scaled_h, flags="bicubic")
            if (plan.width, plan.height) != (plan.scaled_w, plan.scaled_h):
                stream = stream.filter("crop", plan.width, plan.height)
            outputs.append(stream.output(targets[name], format=fmt, pix_fmt="rgb24"))
        merged = ffmpeg.merge_outputs(*outputs)
        cmd: list[str] = merged.global_args("-hide_banner", "-nostats", "-loglevel", "error").compile()
        return cmd

    def _check_count(self, view: str, got: int, plan: _Plan) -> str | None:
        if got == 0:
            return f"view {view!r}: no frames decoded"
        if got < self.config.min_frame_ratio * plan.expected:
            return (
                f"view {view!r}: decoded {got} of ~{plan.expected} frames "
                "(source truncated or corrupt mid-stream)"
            )
        return None


class _Plan:
    """Resolved numbers for one view of one clip: sampling rate, sizes, expected frame count."""

    def __init__(
        self, fps: float, scaled: tuple[int, int], out: tuple[int, int], start_s: float, expected: int
    ) -> None:
        self.fps, self.start_s, self.expected = fps, start_s, expected
        self.scaled_w, self.scaled_h = scaled
        self.width, self.height = out

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3


def _plan(view: ViewConfig, clip: Clip) -> _Plan:
    duration = max(clip.duration_s, 1e-3)
    fps = view.fps or clip.probe.avg_fps
    if view.max_frames is not None:
        fps = min(fps, view.max_frames / duration)
    expected = max(1, math.ceil(duration * fps - 1e-6))  # slots k with k / fps < duration
    if view.max_frames is not None:
        expected = min(expected, view.max_frames)
    scaled, out = _sizes(view, clip.probe)
    return _Plan(fps, scaled, out, clip.start_s, expected)


def _sizes(view: ViewConfig, probe: ProbeInfo) -> tuple[tuple[int, int], tuple[int, int]]:
    """(scaled width, height) and (output width, height) for a view of a ``probe``-sized source."""
    w, h = probe.width, probe.height
    if view.resize == "none":
        return (w, h), (w, h)
    if view.resize == "short_side":
        assert view.size is not None
        scale = view.size / min(w, h)
    else:
        assert view.width is not None and view.height is not None
        pick = min if view.resize == "fit" else max
        scale = pick(view.width / w, view.height / h)
    if view.resize == "crop":
        assert view.width is not None and view.height is not None
        scaled = (max(view.width, round(w * scale)), max(view.height, round(h * scale)))
        return scaled, (view.width, view.height)
    m = view.multiple_of
    size = (max(m, round(w * scale / m) * m), max(m, round(h * scale / m) * m))
    return size, size


class _FrameReader:
    """Drains one view's pipe on a thread into a preallocated buffer of ``plan.expected`` frames.

    The fps filter may emit one frame past the clip's end (the slot at exactly ``duration``); frames beyond
    the expected count are read and discarded so that ffmpeg never blocks on a full pipe.
    """

    def __init__(self, fd: int, plan: _Plan) -> None:
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._plan = plan
        self._buf = np.empty(plan.expected * plan.frame_bytes, dtype=np.uint8)
        self._used = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        view = self._buf.data
        with self._file as f:
            while self._used < len(self._buf) and (n := f.readinto(view[self._used :])):
                self._used += n
            while f.read(1 << 20):
                pass

    def join(self) -> None:
        self._thread.join()

    def frames(self) -> Frames:
        plan = self._plan
        t = self._used // plan.frame_bytes
        frames_THWC = self._buf[: t * plan.frame_bytes].reshape(t, plan.height, plan.width, 3)
        timestamps_s = plan.start_s + np.arange(t) / plan.fps
        return Frames(frames_THWC=frames_THWC, fps=plan.fps, timestamps_s=timestamps_s)
