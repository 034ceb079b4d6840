"""Rectified flow / flow matching: the training objective and the Euler sampler that inverts it.

Convention: ``x_t = (1 - t) * x_0 + t * noise`` with t in [0, 1] (t = 1 is pure noise); the model predicts
the velocity ``v = noise - x_0``; sampling integrates dx/dt = v from t = 1 down to 0. Training times are
logit-normal (``sigmoid(N(mean, std))``: most weight on the middle, where the task is hardest), and a share of
the captions is replaced by the null text so that one model serves classifier-free guidance.

Legend: ``x_BCTHW`` latents, ``t_B`` times, ``text_BLD`` / ``text_mask_BL`` text states and mask.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from pydantic import Field

from dataengine.config import Config

Velocity = Callable[..., torch.Tensor]


class FlowConfig(Config):
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0)
    text_dropout: float = Field(0.1, ge=0, lt=1, description="share of samples trained with the null text")


def training_inputs(
    x0_BCTHW: torch.Tensor, config: FlowConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy latents, times, velocity targets and text-dropout flags of a batch (all from ``generator``)."""
    b, dev = x0_BCTHW.shape[0], x0_BCTHW.device  # drawn where the batch is: no host-device copies
    normal = torch.randn(b, generator=generator, device=dev) * config.logit_std + config.logit_mean
    t_B = torch.sigmoid(normal)
    noise = torch.randn(x0_BCTHW.shape, generator=generator, device=dev)
    drop_B = torch.rand(b, generator=generator, device=dev) < config.text_dropout
    x0_BCTHW = x0_BCTHW.float()
    t = t_B.view(b, 1, 1, 1, 1)
    x_t = (1 - t) * x0_BCTHW + t * noise
    return x_t, t_B, noise - x0_BCTHW, drop_B


def flow_loss(velocity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(velocity.float(), target.float())


@torch.no_grad()
def euler_sample(
    model: Velocity,
    noise_BCTHW: torch.Tensor,
    text_BLD: torch.Tensor,
    text_mask_BL: torch.Tensor,
    steps: int = 30,
    cfg_scale: float = 4.0,
) -> torch.Tensor:
    """Integrate from noise (t = 1) to data (t = 0) in ``steps`` Euler steps with classifier-free guidance:
    ``v = v_uncond + cfg_scale * (v_text - v_uncond)`` (``cfg_scale = 1``: no guidance)."""
    x = noise_BCTHW
    b = x.shape[0]
    times = torch.linspace(1.0, 0.0, steps + 1, device=x.device)
    keep, drop = (
        torch.zeros(b, dtype=torch.bool, device=x.device),
        torch.ones(b, dtype=torch.bool, device=x.device),
    )
    for t, t_next in itertools.pairwise(times):
        t_B = t.expand(b)
        v = model(x, t_B, text_BLD, text_mask_BL, drop_text_B=keep)
        if cfg_scale != 1.0:
            v_uncond = model(x, t_B, text_BLD, text_mask_BL, drop_text_B=drop)
            v = v_uncond + cfg_scale * (v - v_uncond)
        x = x + (t_next - t) * v
    return x
