"""One interface over diffusers' video autoencoders: uint8 frames in, raw float16 latents out, and back.

Legend: ``frames_BTHWC`` is uint8 RGB, B clips of T frames of H x W x 3; ``latents_BCTHW`` is B clips of C
latent channels x T latent frames x H x W latent pixels.

Kinds: ``wan`` (``AutoencoderKLWan``, the video default), ``ltx`` (``AutoencoderKLLTXVideo``), ``cogvideox``
(``AutoencoderKLCogVideoX``): causal video VAEs that encode the first frame alone and every
``temporal_compression`` frames after it into one latent frame, so they take ``1 + k * temporal_compression``
frames (other counts are fitted first: ``frame_rule`` trims to the longest such prefix, or pads by repeating
the last frame). ``kl`` (``AutoencoderKL``) encodes each frame on its own: any frame count.

Latents are the posterior's mode (``latent_dist.mode()``: deterministic, no seed), stored RAW. ``info`` names
the statistics the class defines so a trainer can normalise and a sampler can undo it; ``normalization``
turns them into one per-channel ``(z - mean) * scale``, the rule each family's diffusers pipeline applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from dataengine import model_cache
from dataengine.config import Config, ConfigError
from dataengine.encode.tiny_vae import VAEKind, resolve_vae

if TYPE_CHECKING:
    import torch

_CLASSES: dict[str, str] = {
    "wan": "AutoencoderKLWan",
    "ltx": "AutoencoderKLLTXVideo",
    "cogvideox": "AutoencoderKLCogVideoX",
    "kl": "AutoencoderKL",
}


class VAEConfig(Config):
    kind: VAEKind = "wan"
    model: str = Field(description="local folder, hub id, or builtin:tiny-<kind> (built offline)")
    subfolder: str | None = Field(
        None, description="the VAE's folder inside model (pipeline repos: 'vae'); local: found by itself"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    frame_rule: Literal["trim", "pad"] = Field(
        "trim",
        description="fit causal video VAEs' 1 + k*temporal_compression frames: trim, or pad with the last",
    )
    batch_size: int = Field(4, ge=1, description="clips per encoder call")


class VAE:
    """A loaded autoencoder. Build it with ``load_vae``; ``info`` is JSON-ready metadata for the manifest."""

    def __init__(self, model: Any, config: VAEConfig) -> None:
        self.model = model
        self.config = config
        self.spatial_compression, self.temporal_compression = _compression(model, config.kind)
        self.info: dict[str, Any] = _info(model, config, self.spatial_compression, self.temporal_compression)

    @property
    def is_causal_video(self) -> bool:
        return self.config.kind != "kl"

    def frames_used(self, t: int) -> int:
        """How many frames a clip of ``t`` frames becomes under ``frame_rule`` (0: too short to encode)."""
        step = self.temporal_compression
        if not self.is_causal_video or t < 1:
            return max(t, 0)
        k = (t - 1) // step if self.config.frame_rule == "trim" else -(-(t - 1) // step)
        return 1 + k * step

    def fit(self, frames_THWC: np.ndarray) -> np.ndarray:
        """``frames_THWC`` trimmed or padded (last frame repeated) to ``frames_used`` frames."""
        t = len(frames_THWC)
        n = self.frames_used(t)
        if n <= t:
            return frames_THWC[:n]
        return np.concatenate([frames_THWC, np.repeat(frames_THWC[-1:], n - t, axis=0)])

    def encode(self, frames_BTHWC: np.ndarray) -> np.ndarray:
        """Encode clips of one shape, ``batch_size`` at a time.

        Args:
            frames_BTHWC: uint8 RGB; T must already fit (see ``fit``); H and W multiples of
                ``spatial_compression``.

        Returns:
            ``latents_BCTHW`` float16, raw (not normalised).

        Raises:
            ValueError: a shape the VAE cannot encode.
        """
        import torch

        self._check_frames(frames_BTHWC)
        out = []
        with torch.inference_mode():
            for start in range(0, len(frames_BTHWC), self.config.batch_size):
                chunk = torch.from_numpy(
                    np.ascontiguousarray(frames_BTHWC[start : start + self.config.batch_size])
                )
                x_BTHWC = chunk.to(self.config.device).to(self.model.dtype) / 127.5 - 1
                x_BCTHW = x_BTHWC.permute(0, 4, 1, 2, 3).contiguous()  # strided input: slow conv paths
                out.append(self._encode(x_BCTHW).to("cpu", torch.float16).numpy())
        return np.concatenate(out)

    def decode(self, latents_BCTHW: np.ndarray) -> np.ndarray:
        """Raw latents back to ``frames_BTHWC`` uint8 (causal video VAEs: ``1 + (T - 1) * temporal``)."""
        import torch

        with torch.inference_mode():
            z = torch.from_numpy(np.ascontiguousarray(latents_BCTHW)).to(self.config.device, self.model.dtype)
            x_BCTHW = self._decode(z).float().clamp(-1, 1)
            frames = ((x_BCTHW + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
        return frames.cpu().numpy()

    def _encode(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        if self.is_causal_video:
            return self.model.encode(x_BCTHW).latent_dist.mode()
        b, c, t, h, w = x_BCTHW.shape
        x_NCHW = x_BCTHW.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        z_NCHW = self.model.encode(x_NCHW).latent_dist.mode()
        return z_NCHW.reshape(b, t, *z_NCHW.shape[1:]).permute(0, 2, 1, 3, 4)

    def _decode(self, z_BCTHW: torch.Tensor) -> torch.Tensor:
        if self.is_causal_video:
            return self.model.decode(z_BCTHW).sample
        b, c, t, h, w = z_BCTHW.shape
        x_NCHW = self.model.decode(z_BCTHW.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)).sample
        return x_NCHW.reshape(b, t, *x_NCHW.shape[1:]).permute(0, 2, 1, 3, 4)

    def _check_frames(self, frames_BTHWC: np.ndarray) -> None:
        if frames_BTHWC.dtype != np.uint8 or frames_BTHWC.ndim != 5 or frames_BTHWC.shape[4] != 3:
            raise ValueError(
                f"frames_BTHWC must be uint8 (B,T,H,W,3); got {frames_BTHWC.dtype} {frames_BTHWC.shape}"
            )
        _, t, h, w, _ = frames_BTHWC.shape
        if t < 1 or self.frames_used(t) != t:
            raise ValueError(f"{t} frames do not fit {self.info['class']}: fit() them first")
        s = self.spatial_compression
        if h % s or w % s:
            raise ValueError(f"{h}x{w} frames: {self.info['class']} needs multiples of {s}")


def load_vae(config: VAEConfig) -> VAE:
    """Load the configured autoencoder (``builtin:`` models are built and cached first), in eval mode.

    Raises:
        ConfigError: the checkpoint is of another class than ``kind`` names.
    """
    import diffusers
    import torch
    from diffusers.utils import is_accelerate_available

    path = resolve_vae(config.model, config.kind)
    subfolder = config.subfolder
    if subfolder is None and not _is_file(path, "config.json") and _is_file(path, "vae/config.json"):
        subfolder = "vae"
    cls = getattr(diffusers, _CLASSES[config.kind])
    with model_cache.loading(config.model, "encode.vae.model"):
        found = cls.load_config(path, subfolder=subfolder).get("_class_name")
    if found != cls.__name__:
        raise ConfigError(
            f"{config.model!r} holds a {found}, not the {cls.__name__} kind={config.kind!r} needs"
        )
    with model_cache.loading(config.model, "encode.vae.model"):
        model = cls.from_pretrained(
            path,
            subfolder=subfolder,
            torch_dtype=getattr(torch, config.dtype),
            low_cpu_mem_usage=is_accelerate_available(),  # else diffusers warns on every load
        )
    return VAE(model.to(config.device).eval(), config)


def normalization(info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(mean_C, scale_C)`` float32 with ``z_normalised = (z - mean) * scale``.

    ``mean`` is ``latents_mean``, else ``shift_factor``, else 0; ``scale`` is ``scaling_factor`` (else 1)
    divided by ``latents_std`` (else 1). Undo it with ``z = z_normalised / scale + mean``.
    """
    c = info["latent_channels"]
    mean = np.zeros(c, np.float32) + (info["latents_mean"] or info["shift_factor"] or 0.0)
    scale = np.float32(info["scaling_factor"] or 1.0) / np.asarray(info["latents_std"] or 1.0, np.float32)
    return mean.astype(np.float32), np.broadcast_to(scale, (c,)).astype(np.float32)


def _compression(model: Any, kind: str) -> tuple[int, int]:
    """(spatial, temporal) compression as each class computes it from its config."""
    cfg = model.config
    if kind == "wan":
        spatial = cfg.scale_factor_spatial or 2 ** (len(cfg.dim_mult) - 1) * (cfg.patch_size or 1)
        return int(spatial), int(cfg.scale_factor_temporal or 2 ** sum(cfg.temperal_downsample))
    if kind == "ltx":
        return int(model.spatial_compression_ratio), int(model.temporal_compression_ratio)
    spatial = 2 ** (len(cfg.block_out_channels) - 1)
    return spatial, int(cfg.temporal_compression_ratio) if kind == "cogvideox" else 1


def _info(model: Any, config: VAEConfig, spatial: int, temporal: int) -> dict[str, Any]:
    cfg = model.config

    def listed(name: str) -> list[float] | None:
        if config.kind == "ltx":  # LTX keeps its stats as buffers, saved with the weights
            return [float(v) for v in getattr(model, name).float().tolist()]
        value = cfg.get(name)
        return None if value is None else [float(v) for v in value]

    return {
        "model": config.model,
        "subfolder": config.subfolder,
        "class": type(model).__name__,
        "kind": config.kind,
        "dtype": config.dtype,
        "latent_channels": int(cfg.z_dim if config.kind == "wan" else cfg.latent_channels),
        "spatial_compression": spatial,
        "temporal_compression": temporal,
        "scaling_factor": cfg.get("scaling_factor"),
        "shift_factor": cfg.get("shift_factor"),
        "latents_mean": listed("latents_mean"),
        "latents_std": listed("latents_std"),
        "latent_dist": "mode",
        "frame_rule": config.frame_rule if config.kind != "kl" else "none",
    }


def _is_file(path: str, name: str) -> bool:
    return (Path(path) / name).is_file()
