"""A compact DiT (diffusion transformer) for video latents, trained with flow matching.

Read top to bottom: config, embeddings (timestep, patches, text), 3D rotary positions, attention, the
adaLN-Zero block, the final layer, the model, the FLOPs estimate, and the size presets at the end.

Latents are cut into 3D patches (a strided Conv3d) that become tokens. Positions enter only as a 3D
RoPE on q and k of self-attention, computed for each batch's token grid, so images (T = 1) and videos of
any size share one model. The conditioning vector c = timestep embedding + projected pooled text drives
the adaLN-Zero modulation of DiT; text tokens enter through cross-attention, as in PixArt-alpha. Every
residual branch and the final layer start at zero: each block is the identity at init and the model
outputs exactly 0. Classifier-free guidance: rows flagged in ``drop_text_B``, and rows with no valid
text token, see a learned null token instead of their text.

Shape legend:
    B batch             C latent channels       T, H, W latent frames, height, width
    N video tokens      L text tokens           E text embedding dim (config.text_dim)
    D hidden width      K attention heads       A head dim (D / K)
    F rotary frequencies (A / 2)                P values per patch (pt * ph * pw * C)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812  (the usual spelling)
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dataengine.config import Config, ConfigError

_FREQ_DIM = 256  # sinusoidal timestep features, as in DiT
_TIME_SCALE = 1000.0  # flow-matching t in [0, 1] -> the 0..1000 range the sinusoids were tuned for
_ROPE_THETA = 10000.0


# ---------------------------------------------------------------------------------------------- config


class DiTConfig(Config):
    """The architecture. ``build_dit`` fills it from a named preset; every field can be overridden."""

    in_channels: int = Field(ge=1, description="latent channels C")
    text_dim: int = Field(ge=1, description="text embedding dim E")
    patch: tuple[int, int, int] = Field(default=(1, 2, 2), description="(pt, ph, pw) latent pixels per token")
    hidden: int = Field(ge=8, description="hidden width D")
    depth: int = Field(ge=1, description="number of blocks")
    heads: int = Field(ge=1)
    mlp_ratio: float = Field(default=4.0, gt=0)
    qk_norm: bool = Field(default=True, description="RMSNorm on q and k in both attentions (stability)")
    grad_checkpointing: bool = Field(default=False, description="recompute each block in the backward")

    @model_validator(mode="after")
    def _check_shapes(self) -> DiTConfig:
        if min(self.patch) < 1:
            raise ValueError(f"patch sizes must be >= 1, got {self.patch}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.head_dim % 2 or self.head_dim < 8:
            raise ValueError(f"head dim {self.head_dim} must be even and >= 8 to split over (t, h, w) RoPE")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden * self.mlp_ratio)

    @property
    def patch_values(self) -> int:
        return math.prod(self.patch) * self.in_channels


# ------------------------------------------------------------------------------------------ embeddings


def timestep_features(t_B: Tensor, dim: int = _FREQ_DIM) -> Tensor:
    """Sinusoidal features (B, dim) of flow-matching times ``t_B`` in [0, 1], scaled by 1000."""
    half = dim // 2
    freqs_F = torch.exp(-math.log(10000.0) * torch.arange(half, device=t_B.device) / half)
    angles_BF = (t_B.float() * _TIME_SCALE)[:, None] * freqs_F[None]
    return torch.cat([angles_BF.cos(), angles_BF.sin()], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features -> MLP -> (B, D)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(_FREQ_DIM, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, t_B: Tensor) -> Tensor:
        features_BF = timestep_features(t_B).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(features_BF)))


def masked_mean(text_BLE: Tensor, mask_BL: Tensor) -> Tensor:
    """Mean (B, E) over the valid tokens of each row; a row with none gives zeros."""
    weights_BL = mask_BL.to(text_BLE.dtype)
    total_BE = (text_BLE * weights_BL[..., None]).sum(dim=1)
    return total_BE / weights_BL.sum(dim=1, keepdim=True).clamp_min(1.0)


def _unpatchify(values_BNP: Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> Tensor:
    """(B, N, P) with N in (t, h, w) order -> (B, C, T, H, W)."""
    (nt, nh, nw), (pt, ph, pw) = grid, patch
    batch = values_BNP.shape[0]
    x = values_BNP.reshape(batch, nt, nh, nw, pt, ph, pw, -1)
    x_BCtThHwW = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x_BCtThHwW.reshape(batch, -1, nt * pt, nh * ph, nw * pw)


# ------------------------------------------------------------------------------------- 3D rotary (RoPE)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Head dims given to the (t, h, w) axes: about 1/4, 3/8, 3/8, each even."""
    spatial = 2 * (3 * head_dim // 16)
    return head_dim - 2 * spatial, spatial, spatial


def rope_angles(grid: tuple[int, int, int], head_dim: int, device: torch.device) -> Tensor:
    """Rotation angles (N, F) of the tokens of a (t, h, w) grid, in the row-major order of the patches."""
    coords = torch.meshgrid(
        *(torch.arange(n, device=device, dtype=torch.float32) for n in grid), indexing="ij"
    )
    parts = []
    for coord, dim in zip(coords, rope_axis_dims(head_dim), strict=True):
        freqs_F = _ROPE_THETA ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
        parts.append(coord.flatten()[:, None] * freqs_F[None])
    return torch.cat(parts, dim=-1)


def apply_rope(x_BKNA: Tensor, cos_NF: Tensor, sin_NF: Tensor) -> Tensor:
    """Rotate consecutive pairs of head dims by the token's angles (in float32)."""
    x1, x2 = x_BKNA.float().unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([x1 * cos_NF - x2 * sin_NF, x1 * sin_NF + x2 * cos_NF], dim=-1)
    return rotated.flatten(-2).to(x_BKNA.dtype)


# ------------------------------------------------------------------------------------------- attention


def _split_heads(x_BND: Tensor, heads: int) -> Tensor:
    return x_BND.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge_heads(x_BKNA: Tensor) -> Tensor:
    return x_BKNA.transpose(1, 2).flatten(2)


def _qk_norm(config: DiTConfig) -> nn.Module:
    return nn.RMSNorm(config.head_dim, eps=1e-6) if config.qk_norm else nn.Identity()


class SelfAttention(nn.Module):
    """Multi-head self-attention over the video tokens, RoPE on q and k."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.q_norm, self.k_norm = _qk_norm(config), _qk_norm(config)
        self.proj = nn.Linear(config.hidden, config.hidden)

    def forward(self, x_BND: Tensor, cos_NF: Tensor, sin_NF: Tensor) -> Tensor:
        q_BND, k_BND, v_BND = self.qkv(x_BND).chunk(3, dim=-1)
        q_BKNA = apply_rope(self.q_norm(_split_heads(q_BND, self.heads)), cos_NF, sin_NF)
        k_BKNA = apply_rope(self.k_norm(_split_heads(k_BND, self.heads)), cos_NF, sin_NF)
        out_BKNA = F.scaled_dot_product_attention(q_BKNA, k_BKNA, _split_heads(v_BND, self.heads))
        return self.proj(_merge_heads(out_BKNA))


class CrossAttention(nn.Module):
    """Video tokens attend to the projected text tokens; padded text tokens are masked out."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.q = nn.Linear(config.hidden, config.hidden)
        self.kv = nn.Linear(config.hidden, 2 * config.hidden)
        self.q_norm, self.k_norm = _qk_norm(config), _qk_norm(config)
        self.proj = nn.Linear(config.hidden, config.hidden)  # zero at init: the branch starts silent

    def forward(self, x_BND: Tensor, context_BLD: Tensor, mask_BL: Tensor) -> Tensor:
        k_BLD, v_BLD = self.kv(context_BLD).chunk(2, dim=-1)
        q_BKNA = self.q_norm(_split_heads(self.q(x_BND), self.heads))
        k_BKLA = self.k_norm(_split_heads(k_BLD, self.heads))
        out_BKNA = F.scaled_dot_product_attention(
            q_BKNA, k_BKLA, _split_heads(v_BLD, self.heads), attn_mask=mask_BL[:, None, None, :]
        )
        return self.proj(_merge_heads(out_BKNA))


# --------------------------------------------------------------------------------- adaLN-Zero block


def _modulate(x_BND: Tensor, shift_B1D: Tensor, scale_B1D: Tensor) -> Tensor:
    return x_BND * (1 + scale_B1D) + shift_B1D


def _layer_norm(hidden: int) -> nn.LayerNorm:
    return nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)


class Mlp(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)

    def forward(self, x_BND: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x_BND), approximate="tanh"))


class DiTBlock(nn.Module):
    """Modulated self-attention, pre-norm cross-attention, modulated MLP; the identity at init."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        hidden = config.hidden
        self.norm1, self.norm3 = _layer_norm(hidden), _layer_norm(hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)  # affine: cross-attention is not modulated by c
        self.attn = SelfAttention(config)
        self.cross = CrossAttention(config)
        self.mlp = Mlp(hidden, config.mlp_hidden)
        self.ada = nn.Linear(hidden, 6 * hidden)  # zero at init -> gates 0

    def forward(
        self,
        x_BND: Tensor,
        c_BD: Tensor,
        context_BLD: Tensor,
        mask_BL: Tensor,
        cos_NF: Tensor,
        sin_NF: Tensor,
    ) -> Tensor:
        shift1, scale1, gate1, shift3, scale3, gate3 = self.ada(F.silu(c_BD))[:, None].chunk(6, dim=-1)
        x_BND = x_BND + gate1 * self.attn(_modulate(self.norm1(x_BND), shift1, scale1), cos_NF, sin_NF)
        x_BND = x_BND + self.cross(self.norm2(x_BND), context_BLD, mask_BL)
        return x_BND + gate3 * self.mlp(_modulate(self.norm3(x_BND), shift3, scale3))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear to the P values of each patch; all zero at init."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.norm = _layer_norm(config.hidden)
        self.ada = nn.Linear(config.hidden, 2 * config.hidden)
        self.linear = nn.Linear(config.hidden, config.patch_values)

    def forward(self, x_BND: Tensor, c_BD: Tensor) -> Tensor:
        shift_B1D, scale_B1D = self.ada(F.silu(c_BD))[:, None].chunk(2, dim=-1)
        return self.linear(_modulate(self.norm(x_BND), shift_B1D, scale_B1D))


# ----------------------------------------------------------------------------------------------- model


class DiT(nn.Module):
    """Predicts the flow-matching velocity of video (or image, T = 1) latents given time and text."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.grad_checkpointing = config.grad_checkpointing
        hidden, text_dim = config.hidden, config.text_dim
        self.patch_embed = nn.Conv3d(
            config.in_channels, hidden, kernel_size=config.patch, stride=config.patch
        )
        self.time_embed = TimestepEmbedder(hidden)
        self.text_pool_proj = nn.Linear(text_dim, hidden)
        self.text_token_proj = nn.Linear(text_dim, hidden)
        self.null_text = nn.Parameter(torch.empty(1, text_dim))
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final = FinalLayer(config)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv3d):  # the patch embedding as the Linear it is
                nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.time_embed.fc1.weight, std=0.02)
        nn.init.normal_(self.time_embed.fc2.weight, std=0.02)
        nn.init.normal_(self.null_text, std=0.02)
        silent: list[nn.Linear] = [self.final.ada, self.final.linear]
        for block in self.blocks:
            assert isinstance(block, DiTBlock)
            silent += [block.ada, block.cross.proj]
        for linear in silent:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        latents_BCTHW: Tensor,
        t_B: Tensor,
        text_BLE: Tensor,
        text_mask_BL: Tensor,
        drop_text_B: Tensor | None = None,
    ) -> Tensor:
        """Velocity prediction for ``latents_BCTHW``.

        Args:
            latents_BCTHW: noisy latents; T, H, W divisible by ``config.patch``.
            t_B: flow-matching times in [0, 1].
            text_BLE: text token embeddings; a pooled sentence embedding comes as L = 1.
            text_mask_BL: bool, True for real tokens. A row with none is treated as dropped.
            drop_text_B: bool, True where the row sees the null text instead (classifier-free guidance).

        Returns:
            Tensor shaped like ``latents_BCTHW``.

        Raises:
            ValueError: on shapes that do not fit the config or each other.
        """
        grid = self._token_grid(latents_BCTHW)
        self._check_conditioning(latents_BCTHW.shape[0], t_B, text_BLE, text_mask_BL)
        text_BLE, text_mask_BL = self._with_null_text(text_BLE, text_mask_BL, drop_text_B)
        c_BD = self.time_embed(t_B) + self.text_pool_proj(masked_mean(text_BLE, text_mask_BL))
        context_BLD = self.text_token_proj(text_BLE)
        angles_NF = rope_angles(grid, self.config.head_dim, latents_BCTHW.device)
        cos_NF, sin_NF = angles_NF.cos(), angles_NF.sin()
        tokens_BND = self.patch_embed(latents_BCTHW).flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens_BND = self._run_block(block, tokens_BND, c_BD, context_BLD, text_mask_BL, cos_NF, sin_NF)
        return _unpatchify(self.final(tokens_BND, c_BD), grid, self.config.patch)

    def _run_block(self, block: nn.Module, *args: Tensor) -> Any:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _token_grid(self, latents_BCTHW: Tensor) -> tuple[int, int, int]:
        shape = tuple(latents_BCTHW.shape)
        if len(shape) != 5 or shape[1] != self.config.in_channels:
            raise ValueError(f"latents_BCTHW must be (B, {self.config.in_channels}, T, H, W), got {shape}")
        sizes, patch = shape[2:], self.config.patch
        if any(size % p for size, p in zip(sizes, patch, strict=True)):
            raise ValueError(
                f"latent (T, H, W) = {sizes} must be divisible by the patch (pt, ph, pw) = {patch}"
            )
        nt, nh, nw = (size // p for size, p in zip(sizes, patch, strict=True))
        return nt, nh, nw

    def _check_conditioning(self, batch: int, t_B: Tensor, text_BLE: Tensor, text_mask_BL: Tensor) -> None:
        text_dim, text_shape = self.config.text_dim, tuple(text_BLE.shape)
        if len(text_shape) != 3 or text_shape[0] != batch or text_shape[1] < 1 or text_shape[2] != text_dim:
            raise ValueError(f"text_BLE must be (B={batch}, L >= 1, E={text_dim}), got {text_shape}")
        if text_mask_BL.shape != text_BLE.shape[:2] or text_mask_BL.dtype != torch.bool:
            got = f"{text_mask_BL.dtype} {tuple(text_mask_BL.shape)}"
            raise ValueError(f"text_mask_BL must be bool of shape {text_shape[:2]}, got {got}")
        if tuple(t_B.shape) != (batch,):
            raise ValueError(f"t_B must be ({batch},), got {tuple(t_B.shape)}")

    def _with_null_text(
        self, text_BLE: Tensor, mask_BL: Tensor, drop_B: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Zero the padding, then give dropped rows and rows without valid tokens the null token."""
        null_B = ~mask_BL.any(dim=1)
        if drop_B is not None:
            null_B = null_B | drop_B.to(device=mask_BL.device, dtype=torch.bool)
        text_BLE = text_BLE.masked_fill(~mask_BL[..., None], 0.0)
        null_LE = F.pad(self.null_text.to(text_BLE.dtype), (0, 0, 0, text_BLE.shape[1] - 1))
        null_mask_L = torch.arange(text_BLE.shape[1], device=mask_BL.device) == 0
        text_BLE = torch.where(null_B[:, None, None], null_LE, text_BLE)
        return text_BLE, torch.where(null_B[:, None], null_mask_L, mask_BL)


# ----------------------------------------------------------------------------------------------- FLOPs


def flops_per_sample(config: DiTConfig, tokens: int, text_tokens: int) -> float:
    """Estimated training FLOPs (forward + backward) of one sample, for MFU.

    flops = 6 * (M_video * N + M_text * L + M_sample) + 12 * depth * D * (N^2 + N * L)

    with N = ``tokens`` (video tokens after patching), L = ``text_tokens``, D hidden, E text dim,
    P values per patch, M_ff = D * mlp_hidden, and the parameters used in matrix multiplies once per
    video token, text token and sample:

        M_video  = depth * (4 D^2 [self q, k, v, out] + 2 D^2 [cross q, out] + 2 M_ff) + 2 P D [patch in, out]
        M_text   = depth * 2 D^2 [cross k, v] + E D [token projection]
        M_sample = depth * 6 D^2 + 2 D^2 [adaLN] + 256 D + D^2 [timestep MLP] + E D [pooled text]

    A multiply-add is 2 FLOPs and the backward costs twice the forward, hence 6 per parameter and token.
    Attention scores and the weighted sum are two matmuls of 2 * N * M * D FLOPs each (M = N keys for
    self-attention, L for cross), 4 N M D forward, 12 N M D with the backward. Norms, softmax, RoPE and
    other elementwise work are left out; so is the recompute of activation checkpointing (not useful work).
    """
    d, e, depth = config.hidden, config.text_dim, config.depth
    per_video = depth * (6 * d * d + 2 * d * config.mlp_hidden) + 2 * config.patch_values * d
    per_text = depth * 2 * d * d + e * d
    per_sample = depth * 6 * d * d + 2 * d * d + _FREQ_DIM * d + d * d + e * d
    matmuls = 6 * (per_video * tokens + per_text * text_tokens + per_sample)
    return float(matmuls + 12 * depth * d * (tokens * tokens + tokens * text_tokens))


# --------------------------------------------------------------------------------------------- presets


def build_dit(preset: str, in_channels: int, text_dim: int, **overrides: Any) -> DiT:
    """A DiT of a named size (see ``PRESETS``), any config field overridable.

    Raises:
        ConfigError: (a ValueError) for an unknown preset.
        pydantic.ValidationError: (a ValueError) for an unknown or invalid override.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown DiT preset {preset!r}; known: {', '.join(PRESETS)}")
    fields = {**PRESETS[preset], "in_channels": in_channels, "text_dim": text_dim, **overrides}
    return DiT(DiTConfig(**fields))


PRESETS: dict[str, dict[str, Any]] = {  # DiT's sizes; patch (1, 2, 2) is DiT-*/2 on each frame
    "tiny": {"hidden": 64, "depth": 2, "heads": 4},
    "mini": {"hidden": 128, "depth": 4, "heads": 4},  # CPU runs of a few thousand steps
    "S": {"hidden": 384, "depth": 12, "heads": 6},
    "B": {"hidden": 768, "depth": 12, "heads": 12},
    "L": {"hidden": 1024, "depth": 24, "heads": 16},
    "XL": {"hidden": 1152, "depth": 28, "heads": 16},
}
