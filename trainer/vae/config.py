"""What a VAE training run is: the Wan architecture's size, the sample footage's spans, and the run's budget,
data and optimiser settings (``VAETrainConfig``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from dataengine.config import Config
from dataengine.stages import ViewConfig


class WanArch(Config):
    """``AutoencoderKLWan`` constructor arguments: each level of ``dim_mult`` after the first halves the size
    (four levels: 8x spatial compression), each true ``temperal_downsample`` halves the frames (two: 4x)."""

    base_dim: int = Field(12, ge=4)
    z_dim: int = Field(16, ge=1, description="latent channels")
    dim_mult: list[int] = Field(
        default_factory=lambda: [1, 2, 2],
        min_length=2,
        description="with is_residual the last two must be equal (Wan 2.2's shortcuts); [1, 2, 2]: 4x "
        "spatial, a 16x16 latent grid for the demo's 64x64 view (Wan's [1, 2, 4, 4] is 8x)",
    )
    num_res_blocks: int = Field(1, ge=1)
    temperal_downsample: list[bool] = Field(default_factory=lambda: [True, True])
    is_residual: bool = Field(
        True, description="Wan 2.2's parameter-free averaging shortcuts around every resolution change"
    )

    @model_validator(mode="after")
    def _levels(self) -> WanArch:
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs one entry per resolution change: {len(self.dim_mult) - 1} for "
                f"dim_mult {self.dim_mult}, got {self.temperal_downsample}"
            )
        if self.is_residual and self.dim_mult[-1] != self.dim_mult[-2]:
            raise ValueError(
                f"with is_residual the last level keeps its width (its shortcut cannot widen without "
                f"downsampling): end dim_mult with two equal entries, e.g. [1, 2, 2], not {self.dim_mult}"
            )
        return self

    def constructor_kwargs(self) -> dict[str, Any]:
        """The fields plus the compression they make (diffusers' defaults, 8 and 4, hold only for four levels
        with two time downsamplings, and the encode stage reads them from the config)."""
        return self.model_dump() | {
            "scale_factor_spatial": 2 ** (len(self.dim_mult) - 1),
            "scale_factor_temporal": 2 ** sum(self.temperal_downsample),
        }


class FootageConfig(Config):
    """Spans of the sample footage (``dataengine.world.footage``); the end of the first file is held out."""

    train_clips: int = Field(96, ge=0)
    heldout_clips: int = Field(8, ge=0, description="0 and train_clips=0: no footage, no download")
    heldout_s: float = Field(3.0, gt=0, description="the end of the first file kept for evaluation")
    cache_dir: str | None = Field(None, description="where the files are kept; None: <model cache>/footage")


class VAETrainConfig(Config):
    seed: int = Field(0, description="initial weights, training clips and their order")
    minutes: float | None = Field(40.0, gt=0, description="training-loop budget; data preparation is extra")
    max_steps: int | None = Field(None, ge=1, description="stop here even with minutes left")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(5e-4, gt=0, description="peak; 1e-3 and above collapse to a blurry mean")
    warmup_steps: int = Field(50, ge=0)
    beta2: float = Field(0.99, gt=0, lt=1, description="AdamW's; a short memory recovers from spikes")
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm; None: no clipping")
    kl_weight: float = Field(1e-4, ge=0, description="times the mean KL per latent element")
    init_logvar: float = Field(-6.0, description="initial posterior log-variance; 0: diffusers' init")
    frame_init: bool = Field(True, description="start as a per-frame autoencoder (see build_model)")
    crop: int = Field(32, ge=8, description="training crop side, a multiple of 8")
    fps: float = Field(4.0, gt=0, description="fps, frames, width, height: the demo's latents view")
    frames: int = Field(9, ge=1)
    width: int = Field(64, ge=8)
    height: int = Field(64, ge=8)
    clip_s: tuple[float, float] = Field((2.25, 4.0), description="clip lengths, seconds")
    world_clips: int = Field(320, ge=1, description="training world clips, one single-shot video each")
    heldout_world_clips: int = Field(8, ge=1)
    footage: FootageConfig = Field(default_factory=FootageConfig)
    arch: WanArch = Field(default_factory=WanArch)
    log_every: int = Field(25, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> VAETrainConfig:
        if self.minutes is None and self.max_steps is None:
            raise ValueError("set minutes, max_steps or both")
        low, high = self.clip_s
        if low < self.frames / self.fps or high < low or self.footage.heldout_s < low:
            raise ValueError(f"clip_s {self.clip_s} must start at >= frames / fps and <= footage.heldout_s")
        if self.crop % 8 or self.crop > min(self.width, self.height):
            raise ValueError(f"crop {self.crop} must be a multiple of 8 within {self.width}x{self.height}")
        return self

    @property
    def view(self) -> ViewConfig:
        return ViewConfig(
            fps=self.fps, max_frames=self.frames, resize="crop", width=self.width, height=self.height
        )
