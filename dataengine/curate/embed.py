"""Clip embeddings (``clip_emb.npy``): a float32 L2-normalised vector per clip, for semantic dedup and search.

Legend: ``frames_THWC`` is uint8 RGB, T frames of H rows x W columns x 3 channels (the clip's caption view);
``emb_ND`` holds N L2-normalised D-dimensional vectors, one per row.

Kinds (``EmbedConfig.kind``):

  descriptor  (default) a model-free scene descriptor, D=256, a few ms per clip on one CPU core. It runs
              offline with no model hub and no weights (none ship in a package), which is why it is the CPU
              default; the GPU recipe uses ``siglip``. It pools ``frames`` evenly spaced frames, each shrunk
              to a 64x64 area-averaged thumbnail, and concatenates three L2-normalised blocks with fixed
              weights:
                colour   joint HSV histogram, 8 hue x 4 saturation x 4 value bins, soft (trilinear) binning,
                         square-rooted (Hellinger), 128 values, 50% of the squared norm;
                layout   low-frequency 2-D DCT coefficients (zig-zag order, DC dropped) of the mean luma
                         (36) and chroma (2 x 14) 32x32 thumbnails: where bright, dark and coloured regions
                         sit, 64 values, 30%;
                texture  magnitude-weighted gradient-orientation histograms, 8 orientations in a 2x2 grid of
                         cells at two scales (64 and 32 px), square-rooted, 64 values, 20%.
              It captures colour, coarse layout and texture, and is stable under re-encoding and rescaling, so
              near-duplicates (re-uploads, re-encodes, small crops) embed close and scenes of one look
              cluster. It does not capture semantics: two different scenes with similar colours and layout
              (a beach and a desert at noon) embed close, and one scene under other light embeds far.
  clip        ``CLIPVisionModelWithProjection`` (the image tower only) with its ``CLIPImageProcessor``.
  siglip      ``SiglipVisionModel`` (pooled output) with its ``SiglipImageProcessor``.

For the towers each of the ``frames`` evenly spaced frames is embedded and L2-normalised; the clip's vector is
their mean, L2-normalised again. ``model`` is a hub id or a local folder; a full CLIP/SigLIP checkpoint works
too (only the image tower is loaded).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import cache
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from dataengine import model_cache
from dataengine.config import Config, ConfigError

EmbedKind = Literal["descriptor", "clip", "siglip"]
Dtype = Literal["float32", "bfloat16", "float16"]

DESCRIPTOR_DIM = 256
_THUMB = 64  # pixels per side of the area-averaged thumbnails the descriptor works on
_HSV_BINS = (8, 4, 4)
_LUMA_COEFFS, _CHROMA_COEFFS = 36, 14
_ORIENTATIONS = 8
_SHARES = {"colour": 0.5, "layout": 0.3, "texture": 0.2}  # each block's share of the squared norm
_LAYOUT_FLOOR = 0.05  # layouts with less AC energy than this stay short: a flat picture has no layout
_GRADIENT_FLOOR = 0.02  # mean gradient magnitude below which a texture histogram is not blown up to unit mass


class EmbedConfig(Config):
    kind: EmbedKind = Field(
        "descriptor", description="descriptor (model-free, CPU), clip or siglip (a tower)"
    )
    model: str | None = Field(None, description="clip/siglip: hub id or local folder of the image tower")
    frames: int = Field(4, ge=1, description="evenly spaced frames pooled per clip")
    device: str = Field("cpu", description="torch device of the tower")
    dtype: Dtype = Field("float32", description="torch dtype of the tower")
    batch_size: int = Field(16, ge=1, description="clips per tower forward pass")

    @model_validator(mode="after")
    def _model_named(self) -> EmbedConfig:
        if self.kind != "descriptor" and not self.model:
            raise ValueError(f"kind={self.kind!r} needs model (a hub id or a local folder of the tower)")
        return self


class ClipEmbedder:
    """Cheap constructor; ``setup()`` loads the tower once (nothing for ``descriptor``); ``embed()`` batches.

    Args:
        config: what to embed with.
        key: the config key that names ``model``, for the message of a model that cannot be loaded.
    """

    def __init__(self, config: EmbedConfig, key: str = "filters.embed.model") -> None:
        self.config = config
        self.key = key
        self._tower: ImageTower | None = None

    def setup(self) -> None:
        """Load the tower (``clip``/``siglip``).

        Raises:
            ModelUnavailableError: the model can be read neither from a folder nor from a hub.
            ConfigError: the checkpoint is not a tower of ``kind`` (another model, weights missing).
        """
        if self.config.kind != "descriptor" and self._tower is None:
            cfg = self.config
            self._tower = ImageTower.load(cfg.kind, str(cfg.model), cfg.device, cfg.dtype, self.key)

    def teardown(self) -> None:
        self._tower = None

    @property
    def dim(self) -> int:
        """D, the length of every vector ``embed`` returns (towers: after ``setup()``)."""
        if self.config.kind == "descriptor":
            return DESCRIPTOR_DIM
        return self._loaded().dim

    def embed(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One float32 (D,) unit vector per clip, from each clip's ``frames_THWC``.

        Raises:
            ValueError: a clip that is not uint8 (T,H,W,3) with T >= 1.
            RuntimeError: a tower kind before ``setup()``.
        """
        if self.config.kind == "descriptor":
            return [describe(frames_THWC, self.config.frames) for frames_THWC in clips]
        tower, n = self._loaded(), self.config.batch_size
        return [
            v
            for i in range(0, len(clips), n)
            for v in tower.embed_clips(clips[i : i + n], self.config.frames)
        ]

    def _loaded(self) -> ImageTower:
        if self._tower is None:
            raise RuntimeError("ClipEmbedder: call setup() before embed() or dim")
        return self._tower


# ---------------------------------------------------------------------------------------------------- towers
class ImageTower:
    """A loaded image tower and its processor; ``embed_images`` gives one unit vector per image."""

    def __init__(self, model: Any, processor: Any, kind: str, device: str) -> None:
        self.model, self.processor, self.kind, self.device = model, processor, kind, device

    @classmethod
    def load(cls, kind: str, model: str, device: str, dtype: str, key: str) -> ImageTower:
        """The ``clip`` (``CLIPVisionModelWithProjection``) or ``siglip`` (``SiglipVisionModel``) tower.

        Raises:
            ModelUnavailableError: ``model`` can be read neither from a folder nor from a hub.
            ConfigError: the checkpoint lacks weights of the tower, or has them in other shapes.
        """
        import torch
        import transformers

        names = {"clip": ("CLIPVisionModelWithProjection", "CLIPImageProcessor"),
                 "siglip": ("SiglipVisionModel", "SiglipImageProcessor")}  # fmt: skip
        model_name, processor_name = names[kind]
        with model_cache.loading(model, key):
            processor = getattr(transformers, processor_name).from_pretrained(model)
            config = transformers.AutoConfig.from_pretrained(model)
            if config.model_type.removesuffix("_vision_model") != kind:
                raise ConfigError(f"{model!r} holds a {config.model_type} model, not a {kind} image tower")
            vision = getattr(config, "vision_config", config)
            if kind == "clip" and vision is not config:  # a full CLIP keeps the projection size at its top
                vision.projection_dim = config.projection_dim
            net, info = getattr(transformers, model_name).from_pretrained(
                model, config=vision, dtype=getattr(torch, dtype), output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below as a ConfigError
            )  # fmt: skip
        if info["missing_keys"] or info["mismatched_keys"]:
            wrong = sorted(info["missing_keys"]) + [str(k) for k in info["mismatched_keys"]]
            raise ConfigError(
                f"{model!r} is not a {kind} image tower: {len(wrong)} weights missing or misshapen, "
                f"e.g. {wrong[:3]}"
            )
        return cls(net.to(device).eval(), processor, kind, device)

    @property
    def dim(self) -> int:
        cfg = self.model.config
        return int(cfg.projection_dim if self.kind == "clip" else cfg.hidden_size)

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``emb_ND``: float32, one L2-normalised row per uint8 (H,W,3) RGB image."""
        import torch

        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self.model(pixel_values=pixels.to(self.device, self.model.dtype))
        emb = out.image_embeds if self.kind == "clip" else out.pooler_output
        return unit_rows(emb.float().cpu().numpy())

    def embed_frames(self, clips: Sequence[np.ndarray], frames: int) -> list[np.ndarray]:
        """Per clip, ``emb_ND`` of its ``frames`` evenly spaced frames (N = min(frames, T)), in one pass.

        Raises:
            ValueError: a clip that is not uint8 (T,H,W,3) with T >= 1.
        """
        picked = [frames_THWC[frame_indices(len(frames_THWC), frames)] for frames_THWC in map(checked, clips)]
        emb_ND = self.embed_images([frame for group in picked for frame in group])
        bounds = np.cumsum([0, *map(len, picked)])
        return [emb_ND[a:b] for a, b in itertools.pairwise(bounds)]

    def embed_clips(self, clips: Sequence[np.ndarray], frames: int) -> list[np.ndarray]:
        """One unit vector per clip: the normalised mean of its frames' unit vectors (``embed_frames``)."""
        return [pool(emb_ND) for emb_ND in self.embed_frames(clips, frames)]


def frame_indices(t: int, n: int) -> np.ndarray:
    """``min(n, t)`` distinct, evenly spaced indices into ``t`` frames, first and last included."""
    return np.unique(np.linspace(0, t - 1, min(n, t)).round().astype(np.int64))


def pool(emb_ND: np.ndarray) -> np.ndarray:
    """The unit-length mean of N unit vectors: float32 (D,)."""
    return unit_rows(emb_ND.mean(0, keepdims=True))[0]


def unit_rows(x_ND: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    x_ND = np.asarray(x_ND, np.float32)
    return x_ND / np.maximum(np.linalg.norm(x_ND, axis=-1, keepdims=True), 1e-12)


def checked(frames_THWC: np.ndarray) -> np.ndarray:
    """``frames_THWC`` itself, once it is uint8 (T,H,W,3) with T >= 1 (else ValueError)."""
    if frames_THWC.dtype != np.uint8 or frames_THWC.ndim != 4 or frames_THWC.shape[3] != 3:
        raise ValueError(f"frames_THWC must be uint8 (T,H,W,3); got {frames_THWC.dtype} {frames_THWC.shape}")
    if len(frames_THWC) == 0:
        raise ValueError("a clip with no frames has no embedding")
    return frames_THWC


# ------------------------------------------------------------------------------------------------ descriptor
def describe(frames_THWC: np.ndarray, frames: int = 4) -> np.ndarray:
    """The model-free descriptor (module docstring) of ``frames`` evenly spaced frames: float32 (256,), unit.

    Raises:
        ValueError: not uint8 (T,H,W,3) with T >= 1.
    """
    frames_THWC = checked(frames_THWC)
    rgb_F3HW = _thumbnails(frames_THWC[frame_indices(len(frames_THWC), frames)])
    blocks = {
        "colour": _hsv_histogram(_halve(rgb_F3HW)),
        "layout": _layout(rgb_F3HW.mean(0)),
        "texture": _texture(np.tensordot(_LUMA, rgb_F3HW, axes=(0, 1))),
    }
    parts = [np.sqrt(np.float32(_SHARES[name])) * block for name, block in blocks.items()]
    return unit_rows(np.concatenate(parts)[None])[0]


_ORIENTATION_AXES = tuple(  # cos and sin of twice each orientation, shaped to broadcast over (F, H, W)
    f(2 * np.pi * np.arange(_ORIENTATIONS) / _ORIENTATIONS).astype(np.float32)[:, None, None, None]
    for f in (np.cos, np.sin)
)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.169, -0.331, 0.5], [0.5, -0.419, -0.081]], np.float32)


def _thumbnails(frames_FHWC: np.ndarray) -> np.ndarray:
    """float32 (F, 3, 64, 64) in [0, 1], channels first: box-filtered (area averages, in PIL's C code), so
    any size and aspect ratio maps onto one grid."""
    from PIL import Image

    size, box = (_THUMB, _THUMB), Image.Resampling.BOX
    small = np.stack([np.asarray(Image.fromarray(frame).resize(size, box)) for frame in frames_FHWC])
    return small.transpose(0, 3, 1, 2).astype(np.float32, order="C") / np.float32(255)


def _hsv_histogram(rgb_F3HW: np.ndarray) -> np.ndarray:
    """Joint 8x4x4 HSV histogram with trilinear soft binning (hue wraps), unit mass, square-rooted."""
    r, g, b = (rgb_F3HW[:, c].ravel() for c in range(3))
    top, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    span = top - low
    safe = np.where(span > 0, span, np.float32(1))
    hue = np.where(top == r, (g - b) / safe, np.where(top == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    sat = span / np.maximum(top, np.float32(1e-6))
    coords = [
        (np.where(hue < 0, hue + 6, hue) / 6, _HSV_BINS[0], True),
        (sat, _HSV_BINS[1], False),
        (top, _HSV_BINS[2], False),
    ]
    hues, sats, values = (_soft_bins(v, n, wrap) for v, n, wrap in coords)
    hist = np.zeros(int(np.prod(_HSV_BINS)))
    for (ih, wh), (is_, ws), (iv, wv) in itertools.product(hues, sats, values):
        flat = (ih * _HSV_BINS[1] + is_) * _HSV_BINS[2] + iv
        hist += np.bincount(flat, weights=(wh * ws * wv).astype(np.float64), minlength=hist.size)
    return np.sqrt(hist / hist.sum()).astype(np.float32)


def _soft_bins(v: np.ndarray, n: int, wrap: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two bins around each value (centres at (i + 0.5) / n) with linear weights."""
    pos = v * np.float32(n) - np.float32(0.5)
    lo = np.floor(pos)
    frac = pos - lo
    index = lo.astype(np.intp)
    if wrap:  # pos lies in [-0.5, n - 0.5]
        return [(np.where(index < 0, n - 1, index), 1 - frac), (np.where(index >= n - 1, 0, index + 1), frac)]
    return [(np.clip(index, 0, n - 1), 1 - frac), (np.clip(index + 1, 0, n - 1), frac)]


@cache
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``M @ x`` transforms a length-n signal."""
    k, i = np.mgrid[:n, :n]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m.astype(np.float32)


@cache
def _zigzag(n: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the first ``count`` AC coefficients of an n x n block, lowest first."""
    order = sorted(((u, v) for u in range(n) for v in range(n)), key=lambda uv: (uv[0] + uv[1], uv[0]))
    u, v = zip(*order[1 : count + 1], strict=True)
    return np.array(u), np.array(v)


def _layout(rgb_3HW: np.ndarray) -> np.ndarray:
    """Low-frequency DCT of the mean picture's 32x32 luma and chroma; unit length unless nearly flat."""
    ycc_3HW = np.tensordot(_YCBCR, _halve(rgb_3HW), axes=(1, 0))
    m = _dct_matrix(32)
    coeffs = m @ ycc_3HW @ m.T / 32  # / 32: RMS scale, independent of the thumbnail's size
    parts = [
        c[_zigzag(32, n)] for c, n in zip(coeffs, (_LUMA_COEFFS, _CHROMA_COEFFS, _CHROMA_COEFFS), strict=True)
    ]
    layout = np.concatenate(parts)
    return (layout / max(float(np.linalg.norm(layout)), _LAYOUT_FLOOR)).astype(np.float32)


def _texture(gray_FHW: np.ndarray) -> np.ndarray:
    """Gradient-orientation histograms (2x2 cells x 8 orientations) at 64 and 32 px, square-rooted."""
    return np.concatenate([_orientation_cells(gray_FHW), _orientation_cells(_halve(gray_FHW))])


def _halve(x: np.ndarray) -> np.ndarray:
    """2x2 means over the last two axes."""
    return (x[..., ::2, ::2] + x[..., 1::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, 1::2]) * np.float32(0.25)


def _orientation_cells(gray_FHW: np.ndarray) -> np.ndarray:
    """Gradient magnitude spread over 8 orientations per quadrant, unit mass (unless nearly flat), sqrt.

    An orientation's share is cos^2 of twice its angle to the gradient's, within 45 degrees: the shares of the
    8 orientations sum to one for every gradient, without computing an angle.
    """
    gy, gx = np.gradient(gray_FHW, axis=(1, 2))
    mag = np.sqrt(gx * gx + gy * gy)
    inv = np.float32(0.5) / np.maximum(mag, np.float32(1e-12))
    c, s = (gx * gx - gy * gy) * inv, (2 * gx * gy) * inv  # the doubled angle, length mag / 2
    cos_K, sin_K = _ORIENTATION_AXES
    p_KFHW = np.maximum(c * cos_K + s * sin_K, 0)
    share_KFHW = p_KFHW * p_KFHW * (4 * inv)  # mag * cos^2, summing to mag over the orientations
    k, f, h, w = share_KFHW.shape
    rows_KFH2 = share_KFHW.reshape(k, f, h, 2, w // 2).sum(-1)  # left and right half of each row
    hist_K22 = rows_KFH2.reshape(k, f, 2, h // 2, 2).sum((1, 3))
    cells = hist_K22.transpose(1, 2, 0).ravel() / max(float(mag.sum()), _GRADIENT_FLOOR * mag.size)
    return np.sqrt(cells) / np.sqrt(2, dtype=np.float32)  # two scales: unit length together
