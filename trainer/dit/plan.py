"""The training stage of ``dataengine plan``: the recipe's DiT preset, built at its real size with random
weights, one forward and backward on the latent and text shapes the data recipe produces, its FLOPs per
sample, and the memory a step of ``data.batch_size`` needs on a GPU.

Measured here: the peak memory and time of a forward + backward of one sample at the real token count, with
``measured_depth`` blocks (the token count cannot be cut; the depth can, and per-block activations are what
a deeper model repeats). Derived: parameters of the full depth, FLOPs (``flops_per_sample``), and the GPU
estimate: weights, gradients and AdamW state in float32 (16 bytes a parameter, plus an EMA copy at 4) and
activations per sample scaled from the measured per-block peak to the full depth and the precision.
"""

from __future__ import annotations

import math
import time

import torch

from dataengine.plan import BudgetError, StagePlan, human_count, measure_isolated
from trainer.dit.model import PRESETS, DiT, DiTConfig, flops_per_sample
from trainer.dit.train import TrainConfig

STATE_BYTES_PER_PARAM = 16 + 4  # fp32 weights, grads, AdamW's two moments; the EMA copy


def plan_train(
    config: TrainConfig,
    latent_CTHW: tuple[int, int, int, int],
    text_tokens: int,
    text_dim: int,
    kind: str = "video",
    measured_depth: int | None = 1,
) -> StagePlan:
    """The DiT stage for samples of ``latent_CTHW`` latents and ``text_tokens`` x ``text_dim`` text.

    Raises:
        BudgetError: a latent the DiT's patching refuses (a side not divisible by its patch).
    """
    m = config.model
    channels, frames, height, width = latent_CTHW
    dit = DiTConfig(
        **{**PRESETS[m.preset], "in_channels": channels, "text_dim": text_dim, "patch": m.patch,
           "qk_norm": m.qk_norm, "grad_checkpointing": m.grad_checkpointing},
    )  # fmt: skip
    sides = {"frames": frames, "height": height, "width": width}
    for (side, size), step in zip(sides.items(), dit.patch, strict=True):
        if size % step:
            raise BudgetError(
                "train", f"the DiT's patch {dit.patch}",
                f"{kind} latents are {channels}x{frames}x{height}x{width}: {side} {size} is not a multiple "
                f"of {step}",
                "make the latent view's size a multiple of (VAE compression x patch), e.g. "
                "decode.views.latents.width/height, or change the training recipe's model.patch",
            )  # fmt: skip
    tokens = (frames // dit.patch[0]) * (height // dit.patch[1]) * (width // dit.patch[2])
    depth = dit.depth if measured_depth is None else min(measured_depth, dit.depth)
    measured = dit.model_copy(update={"depth": depth, "grad_checkpointing": False})  # a block's whole peak
    (seconds, built_params), peak = measure_isolated(
        _forward_backward, measured.model_dump(), latent_CTHW, text_tokens
    )
    params = _params(dit)
    half = config.precision != "fp32"
    per_block = peak / depth * (0.5 if half else 1.0)  # activations (and the cut model's state) per block
    if dit.grad_checkpointing:  # each block keeps its input; one block's activations live at a time
        activations = dit.depth * tokens * dit.hidden * (2 if half else 4) + per_block
    else:
        activations = per_block * dit.depth
    batch = config.data.batch_size
    gpu_bytes = int(params * STATE_BYTES_PER_PARAM + batch * activations)
    scaled = " x 0.5 (bf16)" if half else ""
    kept = (
        f"measured activations of 1 block + {dit.depth} block inputs (checkpointing)"
        if dit.grad_checkpointing
        else f"measured activations per block x {dit.depth} blocks"
    )
    plan = StagePlan(
        stage=f"train ({kind})",
        model=f"DiT-{m.preset}/{dit.patch[1]} ({dit.depth} blocks, hidden {dit.hidden}"
        + (f"; measured with {depth})" if depth < dit.depth else ")"),
        params=params,
        peak_bytes_here=peak,
        gpu_bytes=gpu_bytes,
        flops_per_clip=flops_per_sample(dit, tokens, text_tokens),
    )
    plan.fact("latent in", f"{channels}x{frames}x{height}x{width}", "the encode stage")
    plan.fact("text in", f"{text_tokens}x{text_dim}", "the text stage")
    plan.fact(
        "tokens per sample", f"{tokens:,}", f"(T/{dit.patch[0]}) x (H/{dit.patch[1]}) x (W/{dit.patch[2]})"
    )
    plan.fact("params", human_count(params), "the preset built at full depth (meta device)")
    plan.fact(
        "forward+backward", f"{seconds:.1f} s for 1 sample, {depth} block(s), float32",
        f"measured here ({built_params / 1e6:.1f}M parameters built)",
    )  # fmt: skip
    plan.fact("FLOPs per sample", f"{plan.flops_per_clip:.3g}", "trainer.dit.model.flops_per_sample")
    plan.fact(
        f"GPU memory at batch {batch}",
        f"{gpu_bytes / 2**30:.1f} GiB",
        f"{STATE_BYTES_PER_PARAM} B/param (fp32 weights, grads, AdamW, EMA) + {batch} x ({kept}){scaled}",
    )  # fmt: skip
    if depth < dit.depth:
        plan.notes.append(f"train: {depth} of {dit.depth} blocks built and run here; memory scaled by depth")
    return plan


def max_batch(plan: StagePlan, params: int, card_bytes: int, batch: int) -> int:
    """How many samples of ``plan``'s shape a card of ``card_bytes`` holds per step, from its estimate."""
    assert plan.gpu_bytes is not None
    per_sample = (plan.gpu_bytes - params * STATE_BYTES_PER_PARAM) / batch
    return max(0, math.floor((card_bytes - params * STATE_BYTES_PER_PARAM) / max(per_sample, 1.0)))


def _params(config: DiTConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in DiT(config).parameters())


def _forward_backward(
    dit_fields: dict[str, object], latent_CTHW: tuple[int, int, int, int], text_tokens: int
) -> tuple[float, int]:
    """One float32 forward + backward of one sample (run in a fresh process by ``measure_isolated``)."""
    torch.manual_seed(0)
    config = DiTConfig.model_validate(dit_fields)
    model = DiT(config)
    latents = torch.randn(1, *latent_CTHW)
    text = torch.randn(1, text_tokens, config.text_dim)
    mask = torch.ones(1, text_tokens, dtype=torch.bool)
    start = time.perf_counter()
    out = model(latents, torch.rand(1), text, mask)
    out.float().pow(2).mean().backward()
    return time.perf_counter() - start, sum(p.numel() for p in model.parameters())
