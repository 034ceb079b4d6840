"""The VAE, its training loop, what it measures (latent statistics, held-out PSNR) and the whole run.

Training: L1 in [-1, 1] plus ``kl_weight`` times the mean KL per latent element; AdamW with warm-up and a
cosine decay over the budget (steps or minutes, whichever ends first), on random ``crop`` x ``crop`` crops
(the network is convolutional: a step costs ~3.5x less than on whole frames), flipped at random. Afterwards
the per-channel ``latents_mean`` / ``latents_std`` of the posterior mode over the training clips go into the
config, and ``save_pretrained`` + ``training.json`` are written atomically. Held-out PSNR is measured through
``load_vae`` on the written folder, the path the pipeline takes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dataengine.encode.vae import VAEConfig, load_vae
from dataengine.model_cache import build_folder, require_empty
from trainer.core import Budget, cosine, warmup
from trainer.vae.config import VAETrainConfig
from trainer.vae.data import Log, batches, build_dataset

if TYPE_CHECKING:
    import torch


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    seconds: float
    loss: float
    psnr_db: dict[str, float | None]


# --- model and training -----------------------------------------------------------------------------------


def build_model(config: VAETrainConfig) -> Any:
    """A freshly initialised ``AutoencoderKLWan`` (seeded by ``config.seed``)."""
    import diffusers
    import torch

    torch.manual_seed(config.seed)
    model: Any = diffusers.AutoencoderKLWan(**config.arch.constructor_kwargs())
    if config.frame_init:
        _per_frame_init(model)
    # Adam moves a bias by about lr per step: from 0 (std 1, the latents drowned in noise) to a trained
    # VAE's narrow posterior would take thousands of steps, so start there.
    with torch.no_grad():
        model.quant_conv.bias[config.arch.z_dim :] += config.init_logvar
    return model


def _per_frame_init(model: Any) -> None:
    """Causal time kernels see only the newest frame; time downsampling keeps every other frame, time
    upsampling repeats frames. With diffusers' init every decoded frame depends mostly on the first latent
    frame (the causal caches carry it forward), so the later latent frames get ~100x less gradient."""
    import torch
    from diffusers.models.autoencoders import autoencoder_kl_wan as wan

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, wan.WanResample) and hasattr(module, "time_conv"):
                conv = module.time_conv
                copies = conv.out_channels // conv.in_channels  # 2 when upsampling: two frames out
                conv.weight.zero_()
                conv.weight[:, :, -1, 0, 0] = torch.eye(conv.in_channels).repeat(copies, 1)
                if conv.bias is not None:
                    conv.bias.zero_()
            elif isinstance(module, wan.WanCausalConv3d) and module.kernel_size[0] > 1:
                module.weight[:, :, -1] *= module.kernel_size[0] ** 0.5  # same output scale, smaller fan-in
                module.weight[:, :, :-1] = 0


def to_input(frames_BTHWC: np.ndarray) -> torch.Tensor:
    """uint8 ``frames_BTHWC`` to a contiguous ``x_BCTHW`` float32 in [-1, 1], as ``VAE.encode`` makes it."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames_BTHWC)).float() / 127.5 - 1
    return x.permute(0, 4, 1, 2, 3).contiguous()


def train_step(
    model: Any, optimizer: Any, x_BCTHW: torch.Tensor, kl_weight: float, grad_clip: float | None
) -> tuple[float, float]:
    """One optimizer step on L1 + ``kl_weight`` * KL of a posterior sample; returns (L1, KL) per element."""
    import torch

    posterior = model.encode(x_BCTHW).latent_dist
    recon = model.decode(posterior.sample()).sample
    l1 = (recon - x_BCTHW).abs().mean()
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
    optimizer.zero_grad(set_to_none=True)
    (l1 + kl_weight * kl).backward()
    if grad_clip is not None:  # per-pixel channel normalisation (RMS_norm) makes rare huge gradients
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return l1.item(), kl.item()


def lr_factor(step: int, progress: float, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` (``step`` counts from 0), under a cosine from 1 to 0.1 as
    ``progress`` through the budget goes from 0 to 1."""
    return warmup(step, warmup_steps) * cosine(progress, 0.1)


def fit(
    config: VAETrainConfig, model: Any, train_NTHWC: np.ndarray, log: Log = print
) -> tuple[int, float, float]:
    """Train ``model`` in place until ``max_steps`` or ``minutes``.

    Returns:
        (steps, seconds, mean L1 over the last ``log_every`` steps).
    """
    import torch

    betas = (0.9, config.beta2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=betas, weight_decay=0.0)
    crops = batches(config, train_NTHWC)
    model.train()
    recent: list[float] = []
    steps, budget = 0, Budget(config.max_steps, config.minutes)
    for step, elapsed in budget.steps():
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, budget.progress(step, elapsed), config.warmup_steps)
        x_BCTHW = to_input(next(crops))
        l1, kl = train_step(model, optimizer, x_BCTHW, config.kl_weight, config.grad_clip)
        recent = [*recent[1 - config.log_every :], l1]
        steps = step + 1
        if steps % config.log_every == 0:
            s = budget.elapsed()
            log(f"step {steps}  l1 {np.mean(recent):.4f}  kl {kl:.2f}  {s / steps:.2f} s/step  {s:.0f} s")
    model.eval()
    return steps, budget.elapsed(), float(np.mean(recent)) if recent else math.nan


def latent_stats(
    model: Any, frames_NTHWC: np.ndarray, batch_size: int = 8
) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of the posterior mode of whole clips."""
    import torch

    modes = []
    with torch.inference_mode():
        for start in range(0, len(frames_NTHWC), batch_size):
            x_BCTHW = to_input(frames_NTHWC[start : start + batch_size])
            modes.append(model.encode(x_BCTHW).latent_dist.mode())
    z_CN = torch.cat(modes).transpose(0, 1).reshape(model.config.z_dim, -1).double()
    return z_CN.mean(1).tolist(), z_CN.std(1).tolist()


def psnr_db(a_NTHWC: np.ndarray, b_NTHWC: np.ndarray) -> float:
    """Mean over clips of each clip's PSNR over its uint8 pixels (peak 255), in dB."""
    diff = a_NTHWC.astype(np.float64) - b_NTHWC.astype(np.float64)
    mse = np.maximum((diff**2).reshape(len(diff), -1).mean(1), 1e-10)
    return float(np.mean(10 * np.log10(255.0**2 / mse)))


def heldout_psnr(vae_config: VAEConfig, frames_NTHWC: np.ndarray) -> float | None:
    """PSNR of ``load_vae(vae_config)``'s encode-then-decode of ``frames_NTHWC``; None when there are none."""
    if len(frames_NTHWC) == 0:
        return None
    vae = load_vae(vae_config)
    return psnr_db(frames_NTHWC, vae.decode(vae.encode(frames_NTHWC)))


def reconstruction_sheet(
    frames_NTHWC: np.ndarray, rebuilt_NTHWC: np.ndarray, path: Path, zoom: int = 2
) -> Path:
    """A PNG, one row per clip: its first, middle and last frames, then the same frames of its
    reconstruction, each ``zoom`` times enlarged (nearest neighbour)."""
    from PIL import Image

    t = frames_NTHWC.shape[1]
    moments = [0, t // 2, t - 1]
    gap = np.full((frames_NTHWC.shape[2], 8, 3), 255, np.uint8)
    rows = []
    for clip, rebuilt in zip(frames_NTHWC, rebuilt_NTHWC, strict=True):
        rows.append(np.concatenate([*clip[moments], gap, *rebuilt[moments]], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(rows[:-1]).repeat(zoom, axis=0).repeat(zoom, axis=1)
    Image.fromarray(sheet).save(path)
    return path


# --- the whole run ----------------------------------------------------------------------------------------


def train_vae(config: VAETrainConfig, out_dir: Path, log: Log = print) -> TrainResult:
    """Build the data, train on one thread, and write ``out_dir`` atomically: ``config.json`` (with the
    latent statistics), ``diffusion_pytorch_model.safetensors``, ``training.json`` and
    ``reconstruction.png`` (the held-out clips beside their reconstructions).

    Raises:
        OutputExistsError (a FileExistsError and a ConfigError): ``out_dir`` has content; checked first.
        OSError: the footage could not be downloaded (footage.train_clips=0, footage.heldout_clips=0: none).
    """
    import diffusers
    import torch

    require_empty(out_dir)
    torch.set_num_threads(1)  # the machines this runs on share their cores; one thread is also reproducible
    data = build_dataset(config, log)
    model = build_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"AutoencoderKLWan, {n_params / 1e6:.2f}M parameters; {len(data.train)} clips {data.train.shape[1:]}")
    steps, seconds, loss = fit(config, model, data.train, log)
    mean, std = latent_stats(model, data.train)
    model.register_to_config(latents_mean=[round(v, 5) for v in mean], latents_std=[round(v, 5) for v in std])
    psnr: dict[str, float | None] = {}

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        vae = load_vae(VAEConfig(kind="wan", model=str(tmp)))  # the written folder, as the pipeline loads it
        heldout = {"world": data.heldout_world, "footage": data.heldout_footage}
        rebuilt = {k: vae.decode(vae.encode(f)) if len(f) else f for k, f in heldout.items()}
        psnr.update({k: psnr_db(f, rebuilt[k]) if len(f) else None for k, f in heldout.items()})
        reconstruction_sheet(
            np.concatenate(list(heldout.values())), np.concatenate(list(rebuilt.values())),
            tmp / "reconstruction.png",
        )  # fmt: skip
        report = {
            "config": config.model_dump(mode="json"), "parameters": n_params, "steps": steps,
            "seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(steps, 1), 3),
            "data_seconds": round(data.seconds, 1), "train_l1": round(loss, 5),
            "train_clips": {"world": len(data.train) - data.train_footage, "footage": data.train_footage},
            "heldout_clips": {"world": len(data.heldout_world), "footage": len(data.heldout_footage)},
            "heldout_psnr_db": {k: None if v is None else round(v, 2) for k, v in psnr.items()},
            "torch": torch.__version__, "diffusers": diffusers.__version__,
        }  # fmt: skip
        (tmp / "training.json").write_text(json.dumps(report, indent=2) + "\n")

    build_folder(out_dir, write)
    return TrainResult(out_dir, steps, seconds, loss, psnr)
