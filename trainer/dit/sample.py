"""Sampling: a prompt -> text states (the encoder the shards were made with) -> Euler ODE with classifier-free
guidance in latent space -> the recorded VAE decodes -> an mp4 and a PNG contact sheet. Also the loss curve.

    dataengine sample --ckpt out/ckpt --prompt "A red circle moves right on blue." --out out/sample
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dataengine.config import ConfigError
from dataengine.encode.text import TextEmbedConfig, TextEmbedder
from dataengine.encode.vae import VAEConfig, load_vae, normalization
from dataengine.media import write_mp4
from trainer.core import plot_losses
from trainer.dit.flow import euler_sample
from trainer.dit.model import DiT, DiTConfig
from trainer.dit.train import iter_metrics, latest_checkpoint


@dataclass(frozen=True)
class SampleResult:
    video: Path
    sheet: Path
    latents_shape: tuple[int, ...]
    frames_shape: tuple[int, ...]  # T, H, W, C


def load_model(ckpt: Path, device: str = "cpu") -> tuple[DiT, dict[str, Any]]:
    """The EMA weights of a checkpoint file (or the latest one in a training folder) and its data facts."""
    path = ckpt if ckpt.is_file() else latest_checkpoint(ckpt)
    if path is None:
        raise ConfigError(f"no checkpoint in {ckpt}: train first (dataengine train --out {ckpt})")
    state = torch.load(path, map_location=device, weights_only=False)
    model = DiT(DiTConfig.model_validate(state["model_config"])).to(device)
    model.load_state_dict(state["ema"])
    return model.eval(), state["facts"]


def sample_video(
    ckpt: Path,
    prompt: str,
    out_dir: Path,
    latent_shape: tuple[int, int, int, int] | None = None,
    steps: int = 30,
    cfg_scale: float = 4.0,
    seed: int = 0,
    device: str = "cpu",
) -> SampleResult:
    """Generate one clip for ``prompt``; ``latent_shape`` (C, T, H, W) defaults to the training data's."""
    model, facts = load_model(ckpt, device)
    shape = tuple(latent_shape or facts["latent_shape"])
    text_LD, mask_L = _embed(prompt, facts)
    noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed)).to(device)
    text = torch.from_numpy(text_LD)[None].to(device)
    mask = torch.from_numpy(mask_L)[None].to(device)
    z = euler_sample(model, noise, text, mask, steps=steps, cfg_scale=cfg_scale)[0].float().cpu().numpy()
    frames_THWC = _decode(z, facts["vae"])
    out_dir.mkdir(parents=True, exist_ok=True)
    video = write_mp4(frames_THWC, out_dir / "sample.mp4", facts.get("fps", 8.0))
    sheet = frame_sheet(frames_THWC, out_dir / "sample.png")
    return SampleResult(video, sheet, tuple(z.shape), tuple(frames_THWC.shape))


def _embed(prompt: str, facts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    if not facts.get("text_encoder"):
        raise ConfigError("the training shards record no text encoder, so prompts cannot be embedded")
    embedder = TextEmbedder(TextEmbedConfig.model_validate(facts["text_encoder"]))
    embedder.setup()
    emb = embedder.embed([prompt])[0]
    text = emb.emb.astype(np.float32)
    if text.ndim == 1:
        return text[None], np.ones(1, bool)
    assert emb.mask is not None
    return text, emb.mask


def _decode(z_CTHW: np.ndarray, vae_info: dict[str, Any]) -> np.ndarray:
    mean, scale = normalization(vae_info)
    raw = z_CTHW / scale[:, None, None, None] + mean[:, None, None, None]
    vae = load_vae(
        VAEConfig(kind=vae_info["kind"], model=vae_info["model"], subfolder=vae_info.get("subfolder"))
    )
    frames_BTHWC: np.ndarray = vae.decode(raw[None].astype(np.float32))
    return frames_BTHWC[0]


def frame_sheet(frames_THWC: np.ndarray, path: Path, min_width: int = 128) -> Path:
    """All frames side by side, upscaled (nearest) so small latents-sized clips stay visible."""
    row = np.concatenate(list(frames_THWC), axis=1)
    zoom = max(1, min_width // frames_THWC.shape[2])
    image = Image.fromarray(row).resize((row.shape[1] * zoom, row.shape[0] * zoom), Image.Resampling.NEAREST)
    image.save(path)
    return path


def loss_curve(metrics: Path, path: Path) -> Path:
    """PNG of loss (and learning rate) against step from ``metrics.jsonl``."""
    lines = list(iter_metrics(metrics))
    return plot_losses(
        path, [(m["step"], m["loss"]) for m in lines], ylabel="flow-matching loss",
        title=f"{metrics.parent.name}: {lines[-1]['step'] if lines else 0} steps",
        lr=[(m["step"], m["lr"]) for m in lines],
    )  # fmt: skip
