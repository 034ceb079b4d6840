"""Typed records that flow between stages, and the deterministic ids that name them.

Legend for array names: ``frames_THWC`` is uint8 RGB, T frames of H rows x W columns x 3 channels.

Flow: ``Source`` --probe--> ``Video`` --split--> ``Clip`` --decode--> ``DecodedClip`` --caption-->
``CaptionedClip``. Any stage may emit a ``Failure`` instead of its output; failures are data (they end up in
the manifest), never exceptions.
"""

from __future__ import annotations

import posixpath
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_DEFAULT_PORTS = {"http": 80, "https": 443}
StageName = Literal["input", "probe", "split", "decode", "filter", "dedup", "caption", "encode", "write"]


def normalize_uri(uri: str | Path) -> str:
    """Return the canonical form of a source location, the basis of its video id.

    Local paths become absolute ``file://`` URIs with ``.``/``..`` collapsed (symlinks are *not*
    resolved: two links to one file are two sources). Remote URIs get a lower-case scheme and host and
    lose default ports; path and query are kept verbatim.
    """
    text = str(uri)
    if "://" not in text or text[:7].lower() == "file://":  # a path: "?" and "#" are part of the name
        path = text[7:] if "://" in text else text
        return "file://" + posixpath.normpath(str(Path(path).expanduser().absolute()))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if parts.port is not None and _DEFAULT_PORTS.get(scheme) != parts.port:
        host = f"{host}:{parts.port}"
    if parts.username:
        host = f"{parts.username}@{host}"
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def video_id_for(uri: str | Path) -> str:
    """Deterministic video id: uuid5(URL namespace, normalized uri) as 32 hex chars."""
    return uuid.uuid5(uuid.NAMESPACE_URL, normalize_uri(uri)).hex


def clip_id_for(video_id: str, start_s: float, end_s: float) -> str:
    """Deterministic clip id: uuid5(video id, span in whole ms) as hex (no dots: it is a WebDataset key)."""
    span = f"{round(start_s * 1000)}-{round(end_s * 1000)}"
    return uuid.uuid5(uuid.UUID(hex=video_id), span).hex


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Record):
    """One input as the user named it, before anything is read."""

    uri: str
    video_id: str

    @classmethod
    def from_uri(cls, uri: str | Path) -> Source:
        norm = normalize_uri(uri)
        return cls(uri=norm, video_id=video_id_for(norm))

    @property
    def is_local(self) -> bool:
        return self.uri.startswith("file://")

    @property
    def local_path(self) -> Path:
        """The file path of a local source (raises ValueError for remote ones)."""
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local file")
        return Path(self.uri.removeprefix("file://"))


class ProbeInfo(_Record):
    """What ffprobe says about the first video stream, with display geometry applied.

    A still image is a one-frame video by convention: ``is_image``, ``n_frames=1`` (exact) and a nominal
    ``duration_s = avg_fps = r_fps = 1.0``, so every stage can treat it as a clip of one second.
    """

    duration_s: float = Field(gt=0, description="seconds; 1.0 (nominal) for a still image")
    avg_fps: float = Field(gt=0, description="frames / duration, what a player shows on average; image: 1.0")
    r_fps: float = Field(
        gt=0, description="ffprobe r_frame_rate: the base rate every timestamp fits; image: 1.0"
    )
    n_frames: int = Field(ge=1, description="1 for a still image")
    n_frames_exact: bool = Field(description="False when n_frames is estimated from duration x avg_fps")
    width: int = Field(ge=1, description="display width after rotation")
    height: int = Field(ge=1, description="display height after rotation")
    rotation: int = Field(description="clockwise display rotation in degrees, one of 0/90/180/270")
    codec: str
    pix_fmt: str
    bit_depth: int = Field(ge=1)
    is_vfr: bool
    has_audio: bool
    container: str
    size_bytes: int = Field(ge=1)
    is_image: bool = Field(False, description="a still picture (png, jpeg, ...) taken as a one-frame video")


class Video(_Record):
    """A source that probed successfully. ``path`` is a local file (remote sources are fetched first)."""

    uri: str
    video_id: str
    path: str
    probe: ProbeInfo


class Clip(_Record):
    """A time span of a video, the unit everything downstream works on."""

    clip_id: str
    video_id: str
    uri: str
    path: str
    index: int = Field(ge=0, description="position of this clip within its video")
    start_s: float = Field(ge=0)
    end_s: float
    shot: int = Field(ge=0, description="index of the shot (scene-cut segment) this clip lies in")
    probe: ProbeInfo

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @classmethod
    def of(cls, video: Video, index: int, start_s: float, end_s: float, shot: int = 0) -> Clip:
        return cls(
            clip_id=clip_id_for(video.video_id, start_s, end_s),
            video_id=video.video_id,
            uri=video.uri,
            path=video.path,
            index=index,
            start_s=start_s,
            end_s=end_s,
            shot=shot,
            probe=video.probe,
        )


class Failure(_Record):
    """A per-item problem: what failed, where, and why. ``kind="dropped"`` marks deliberate filtering."""

    uri: str
    video_id: str
    stage: StageName
    reason: str
    clip_id: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    kind: Literal["error", "dropped"] = "error"
    scores: dict[str, float] = Field(
        default_factory=dict, description="the curation scores measured before the drop (dataengine.curate)"
    )

    @classmethod
    def of(cls, item: Source | Video | Clip, stage: StageName, reason: str, **kw: object) -> Failure:
        extra: dict[str, object] = {}
        if isinstance(item, Clip):
            extra = {"clip_id": item.clip_id, "start_s": item.start_s, "end_s": item.end_s}
        return cls(uri=item.uri, video_id=item.video_id, stage=stage, reason=reason, **extra, **kw)


@dataclass(frozen=True)
class Frames:
    """One decoded view of a clip: ``frames_THWC`` uint8 RGB sampled at ``fps`` from ``timestamps_s``."""

    frames_THWC: np.ndarray
    fps: float
    timestamps_s: np.ndarray

    def __post_init__(self) -> None:
        if self.frames_THWC.dtype != np.uint8 or self.frames_THWC.ndim != 4 or self.frames_THWC.shape[3] != 3:
            raise ValueError(
                f"frames_THWC must be uint8 (T,H,W,3); got {self.frames_THWC.dtype} {self.frames_THWC.shape}"
            )
        if len(self.timestamps_s) != len(self.frames_THWC):
            raise ValueError("one timestamp per frame is required")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        t, h, w, c = self.frames_THWC.shape
        return t, h, w, c

    def subsample(self, n: int) -> Frames:
        """At most ``n`` evenly spaced frames (first and last included), copied."""
        t = len(self.frames_THWC)
        picks = np.linspace(0, t - 1, num=min(n, t)).round().astype(int)
        return Frames(self.frames_THWC[picks].copy(), self.fps, self.timestamps_s[picks])


@dataclass(frozen=True)
class Fingerprint:
    """What the runner's duplicate index needs of a clip (small: it travels through the driver).

    ``digest`` names the exact decoded frames (blake2b of the filter view's bytes); ``phash`` holds one
    64-bit perceptual hash per sampled frame; ``scores`` are the clip's curation scores, so that a clip
    dropped as a duplicate keeps its numbers in the manifest.
    """

    digest: str
    phash: tuple[int, ...]
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Curation:
    """What the curation filters measured on a clip (dataengine.curate); rides along to the sample."""

    scores: dict[str, float]
    fingerprint: Fingerprint | None = None
    embedding: np.ndarray | None = None  # float32 (D,), L2-normalised: clip_emb.npy
    active_box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 of the picture inside borders


@dataclass(frozen=True)
class DecodedClip:
    """A clip with one ``Frames`` per requested view (e.g. ``{"caption": ..., "latents": ...}``)."""

    clip: Clip
    views: dict[str, Frames] = field(default_factory=dict)
    curation: Curation | None = None

    @property
    def clip_id(self) -> str:
        return self.clip.clip_id


class Caption(_Record):
    """What the caption stage wrote for one clip, and with what: engine, model and prompt are always named."""

    caption: str = Field(description="dense prose rendered from the structured caption")
    short_caption: str
    structured: dict[str, Any] = Field(description="the structured caption (dataengine.caption.schema)")
    engine: str
    model: str
    prompt_id: str
    schema_version: str
    attempts: int = Field(ge=1, description="generations until the quality gate passed (windows: the most)")
    windows: int = Field(ge=1, description="1, or the number of frame windows fused into this caption")
    output_tokens: int = Field(ge=0)
    seconds: float = Field(ge=0, description="this clip's share of the engine's wall time")
    mean_logprob: float | None = Field(
        None, le=0, description="mean log-prob of the accepted outputs' tokens; None: the engine reports none"
    )
    min_window_logprob: float | None = Field(
        None, le=0, description="the lowest mean log-prob of any window of tokens (quality.logprob_window)"
    )
    compression_ratio: float = Field(0.0, ge=0, description="the dense caption's zlib compression ratio")
    redraw_psnr: float | None = Field(
        None, description="dB: the frames vs the scene drawn from the caption (caption.verify); worst window"
    )


@dataclass(frozen=True)
class CaptionedClip:
    """A decoded clip with its caption; the decoded views travel on to the encode stage."""

    decoded: DecodedClip
    caption: Caption

    @property
    def clip(self) -> Clip:
        return self.decoded.clip

    @property
    def clip_id(self) -> str:
        return self.decoded.clip_id


@dataclass(frozen=True)
class EncodedClip:
    """A captioned clip with the raw latents of its ``view``; ``vae`` is ``VAE.info`` (stats to normalise)."""

    captioned: CaptionedClip
    latents_CTHW: np.ndarray
    vae: dict[str, Any]
    frames_used: int
    frame_rule: str

    def __post_init__(self) -> None:
        if self.latents_CTHW.dtype != np.float16 or self.latents_CTHW.ndim != 4:
            raise ValueError(f"latents_CTHW must be float16 (C,T,H,W); got {self.latents_CTHW.dtype} "
                             f"{self.latents_CTHW.shape}")  # fmt: skip

    @property
    def clip(self) -> Clip:
        return self.captioned.clip

    @property
    def clip_id(self) -> str:
        return self.captioned.clip_id
