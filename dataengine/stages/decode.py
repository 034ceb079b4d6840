"""Decode: clips into one ``frames_THWC`` array per requested view, decoding each source span once.

Clip --> DecodedClip | Failure(stage="decode"). Consumers want different views of the same clip (captioning:
~2 fps, at most 16 frames, ~448 px; latents: higher fps at the VAE's size). Consecutive clips of one video in
a batch share one ffmpeg *pass*: the source is seeked to the first clip and decoded once, the stream is
``split`` into one branch per (clip, view), each branch cuts out its clip and gets its own ``fps``
(+ ``crop``) + ``scale`` chain, and writes raw RGB to its own pipe, read here by one thread per branch.
Starting one ffmpeg per clip instead costs a process start and a seek back to the previous keyframe for
every clip (2-3x slower, measured by ``bench/decode.py``). When a pass fails as a whole, its clips are
retried one by one, so one damaged region fails only the clips that lie in it.

Frame selection is by timestamp (ffmpeg's ``fps`` filter with ``round=up``): frame k is the source frame on
screen at ``start + k / fps`` (the last one that began at or before it), so variable-frame-rate sources give
evenly spaced frames. Rotation metadata is applied by ffmpeg's autorotate before the filters; 10-bit and
odd-sized sources are converted to 8-bit RGB by the output pixel format.

A still image (``probe.is_image``) has no time grid: every view is exactly one frame (the view's fps and
frame count do not apply), at the probe's nominal rate, with the view's crop and scale.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import ffmpeg
import numpy as np
from pydantic import Field, model_validator

from dataengine.media import input_options, refusal, stderr_tail
from dataengine.records import Clip, DecodedClip, Failure, Frames, ProbeInfo
from dataengine.stages.base import Config, Stage

_SEEK_MARGIN_S = 0.25


class ViewConfig(Config):
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


class DecodeConfig(Config):
    views: dict[str, ViewConfig] = Field(
        default_factory=lambda: {"caption": ViewConfig()}, min_length=1, description="view name -> view"
    )
    timeout_s: float = Field(
        300.0, gt=0, description="ffmpeg wall-clock limit per clip (a pass: per clip in it)"
    )
    min_frame_ratio: float = Field(
        0.8, gt=0, le=1, description="fewer decoded frames than this share of the expected count is a failure"
    )
    threads: int = Field(0, ge=0, description="ffmpeg decoder threads per pass; 0 = ffmpeg decides")
    max_clips_per_pass: int = Field(
        16, ge=1, description="consecutive clips of one video decoded by one ffmpeg process (bounds memory)"
    )


class DecodeStage(Stage[Clip, DecodedClip]):
    name = "decode"
    input_type = Clip
    output_type = DecodedClip
    config: DecodeConfig

    def __init__(self, config: DecodeConfig | None = None) -> None:
        super().__init__(config or DecodeConfig())

    def process_batch(self, batch: Sequence[Clip]) -> list[DecodedClip | Failure]:
        """Decode ``batch`` in input order, one ffmpeg pass per run of consecutive clips of one video."""
        out: list[DecodedClip | Failure] = []
        for run in passes(batch, self.config.max_clips_per_pass):
            out.extend(self.decode_pass(run))
        return out

    def decode(self, clip: Clip) -> DecodedClip | Failure:
        """Decode every view of one clip; problems with the media become a ``Failure``."""
        return self.decode_pass([clip])[0]

    def decode_pass(self, clips: Sequence[Clip]) -> list[DecodedClip | Failure]:
        """Decode clips of one source file with one ffmpeg process; a failed pass is retried clip by clip."""
        branches = self._branches(clips)
        pipes = [os.pipe() for _ in branches]
        cmd = self._command(clips, branches, [f"pipe:{w}" for _, w in pipes], "rawvideo")
        write_fds = [w for _, w in pipes]
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
        readers = [
            _FrameReader(r, b.n_slots, b.plan.frame_bytes) for (r, _), b in zip(pipes, branches, strict=True)
        ]
        timeout = self.config.timeout_s * len(clips)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return [Failure.of(c, "decode", f"ffmpeg timed out after {timeout:g} s") for c in clips]
        finally:
            for reader in readers:
                reader.join()
        if proc.returncode != 0:
            if len(clips) > 1:
                return [self.decode(clip) for clip in clips]
            reason = refusal(stderr, clips[0].path) or f"ffmpeg failed: {stderr_tail(stderr)}"
            return [Failure.of(clips[0], "decode", reason)]
        pairs = zip(branches, readers, strict=True)
        slots = {(b.view, i): (b, first, r) for b, r in pairs for i, first in b.members}
        return [self._collect(i, clip, slots) for i, clip in enumerate(clips)]

    def null_command(self, clips: Sequence[Clip]) -> list[str]:
        """The ffmpeg command ``decode_pass(clips)`` runs, with null outputs: decoding alone, to time it."""
        branches = self._branches(clips)
        return self._command(clips, branches, ["-"] * len(branches), "null")

    def _branches(self, clips: Sequence[Clip]) -> list[_Branch]:
        """One branch per view and slot grid: clips whose starts fall on a shared grid share one branch."""
        branches: list[_Branch] = []
        for name, view in self.config.views.items():
            grids: list[_Branch] = []
            for i in sorted(range(len(clips)), key=lambda k: clips[k].start_s):
                plan = plan_view(view, clips[i])
                if not any(grid.join(i, clips[i].start_s, plan) for grid in grids):
                    grids.append(_Branch(name, plan, clips[i].start_s, [(i, 0)], plan.expected))
            branches.extend(grids)
        return branches

    def _command(
        self, clips: Sequence[Clip], branches: Sequence[_Branch], targets: Sequence[str], fmt: str
    ) -> list[str]:
        probe = clips[0].probe
        # Seek a little before the first clip: the frame on screen at a clip's start began before it.
        origin = max(0.0, min(c.start_s for c in clips) - _SEEK_MARGIN_S)
        end = max(c.end_s for c in clips)
        span = {} if probe.is_image else {"ss": f"{origin:.3f}", "t": f"{end - origin:.3f}"}
        options = input_options(probe.container)
        source = ffmpeg.input(clips[0].path, **span, threads=self.config.threads, **options).video
        split = source.split() if len(branches) > 1 else None
        outputs = []
        for k, (branch, target) in enumerate(zip(branches, targets, strict=True)):
            stream = split[k] if split is not None else source
            if not probe.is_image:
                stream = _on_grid(stream, branch, origin)
            stream = _resized(stream, branch.plan, probe)
            one_frame = {"frames:v": 1} if probe.is_image else {}
            outputs.append(stream.output(target, format=fmt, pix_fmt="rgb24", **one_frame))
        merged = ffmpeg.merge_outputs(*outputs)
        cmd: list[str] = merged.global_args("-hide_banner", "-nostats", "-loglevel", "error").compile()
        return cmd

    def _collect(
        self, i: int, clip: Clip, slots: Mapping[tuple[str, int], tuple[_Branch, int, _FrameReader]]
    ) -> DecodedClip | Failure:
        views = {}
        for name, view in self.config.views.items():
            branch, first, reader = slots[(name, i)]
            plan = plan_view(view, clip)
            frames_THWC = reader.frames(branch.plan)[first : first + plan.expected]
            got = len(frames_THWC)
            if got == 0:
                return Failure.of(clip, "decode", f"view {name!r}: no frames decoded")
            if got < self.config.min_frame_ratio * plan.expected:
                reason = (
                    f"view {name!r}: decoded {got} of ~{plan.expected} frames (source truncated or corrupt)"
                )
                return Failure.of(clip, "decode", reason)
            if len(branch.members) > 1:
                frames_THWC = frames_THWC.copy()  # clips own their frames, even when their spans overlap
            views[name] = Frames(frames_THWC, plan.fps, clip.start_s + np.arange(got) / plan.fps)
        return DecodedClip(clip=clip, views=views)


def _on_grid(stream: Any, branch: _Branch, origin: float) -> Any:
    """``stream`` (decoded from ``origin``) sampled on ``branch``'s slot grid."""
    # Branch time 0 = its anchor; the fps filter then picks, for slot k, the last frame at or before
    # k / fps (round=up), and start_time=0 drops the frames before the anchor.
    fps = branch.plan.fps
    stream = stream.setpts(f"PTS-{branch.anchor_s - origin:.6f}/TB")
    stream = stream.trim(end=f"{branch.n_slots / fps:.6f}")
    return stream.filter("fps", fps=f"{fps:.6f}", round="up", start_time=0)


def _resized(stream: Any, plan: ViewPlan, probe: ProbeInfo) -> Any:
    """``stream`` cropped and scaled to ``plan``'s output size (nothing when the size is already right)."""
    if plan.crop is not None:
        stream = stream.filter("crop", *plan.crop)
    if plan.crop is not None or (plan.width, plan.height) != (probe.width, probe.height):
        stream = stream.filter("scale", plan.width, plan.height, flags="bicubic")
    return stream


def passes(clips: Sequence[Clip], max_clips: int) -> list[list[Clip]]:
    """Split ``clips`` (order kept) into runs of at most ``max_clips`` consecutive clips of one file."""
    runs: list[list[Clip]] = []
    for clip in clips:
        if runs and runs[-1][0].path == clip.path and len(runs[-1]) < max_clips:
            runs[-1].append(clip)
        else:
            runs.append([clip])
    return runs


@dataclass(frozen=True)
class ViewPlan:
    """Resolved numbers for one view of one clip: sampling rate, source crop, output size, frame count."""

    fps: float
    crop: tuple[int, int, int, int] | None  # (w, h, x, y) in source pixels, before scaling
    width: int
    height: int
    expected: int

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3


@dataclass
class _Branch:
    """One branch of a pass's filter graph: one view sampled on one slot grid, read from one pipe.

    Slot k is at ``anchor_s + k / plan.fps``; ``members`` are (clip index, first slot) of the clips it serves.
    """

    view: str
    plan: ViewPlan
    anchor_s: float
    members: list[tuple[int, int]]
    n_slots: int

    def join(self, i: int, start_s: float, plan: ViewPlan) -> bool:
        """Add clip ``i`` when its frames lie on this grid, with no long gap; return whether it was added."""
        same_view = (plan.fps, plan.crop, plan.width, plan.height) == (
            self.plan.fps,
            self.plan.crop,
            self.plan.width,
            self.plan.height,
        )
        slot = (start_s - self.anchor_s) * plan.fps
        first = round(slot)
        if not same_view or abs(slot - first) > 1e-3 or first > self.n_slots + plan.expected:
            return False
        self.members.append((i, first))
        self.n_slots = max(self.n_slots, first + plan.expected)
        return True


def plan_view(view: ViewConfig, clip: Clip) -> ViewPlan:
    crop, (width, height) = _geometry(view, clip.probe.width, clip.probe.height)
    if clip.probe.is_image:
        return ViewPlan(clip.probe.avg_fps, crop, width, height, expected=1)
    duration = max(clip.duration_s, 1e-3)
    fps = view.fps or clip.probe.avg_fps
    if view.max_frames is not None:
        fps = min(fps, view.max_frames / duration)
    expected = max(1, math.ceil(duration * fps - 1e-6))  # slots k with k / fps < duration
    if view.max_frames is not None:
        expected = min(expected, view.max_frames)
    return ViewPlan(fps, crop, width, height, expected)


def _geometry(view: ViewConfig, w: int, h: int) -> tuple[tuple[int, int, int, int] | None, tuple[int, int]]:
    """Source crop box (or None) and output size for a view of a ``w`` x ``h`` (display) source.

    ``crop`` cuts the largest centred box of the target's aspect ratio from the source and scales only that:
    scaling first and cropping after would scale pixels only to throw them away.
    """
    if view.resize == "none":
        return None, (w, h)
    if view.resize == "crop":
        assert view.width is not None and view.height is not None
        box_w, box_h = (
            min(w, round(h * view.width / view.height)),
            min(h, round(w * view.height / view.width)),
        )
        return (box_w, box_h, (w - box_w) // 2, (h - box_h) // 2), (view.width, view.height)
    if view.resize == "short_side":
        assert view.size is not None
        scale = view.size / min(w, h)
    else:
        assert view.width is not None and view.height is not None
        scale = min(view.width / w, view.height / h)
    m = view.multiple_of
    return None, (max(m, round(w * scale / m) * m), max(m, round(h * scale / m) * m))


class _FrameReader:
    """Drains one branch's pipe on a thread into a preallocated buffer of ``n_frames`` frames.

    The fps filter may emit one frame past the end (the slot at exactly the trim point); frames beyond
    ``n_frames`` are read and discarded so that ffmpeg never blocks on a full pipe.
    """

    def __init__(self, fd: int, n_frames: int, frame_bytes: int) -> None:
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._buf = np.empty(n_frames * frame_bytes, dtype=np.uint8)
        self._frame_bytes = frame_bytes
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

    def frames(self, plan: ViewPlan) -> np.ndarray:
        """The complete frames read, as a (T, H, W, 3) view of the buffer."""
        t = self._used // self._frame_bytes
        return self._buf[: t * self._frame_bytes].reshape(t, plan.height, plan.width, 3)
