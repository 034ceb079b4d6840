"""Train a small Wan-architecture video autoencoder (``diffusers.AutoencoderKLWan``) on one CPU thread.

    dataengine train-vae --out /tmp/world-vae   # the shipped builtin:world-vae (~43 min: 2 min of data)
    dataengine train-vae --out /tmp/vae --set minutes=null --set max_steps=5 --set world_clips=8 \\
        --set footage.train_clips=0 --set footage.heldout_clips=0   # ~15 s, no download

Legend: ``frames_NTHWC`` is uint8 RGB, N clips of T frames of H x W x 3; ``x_BCTHW`` is float in [-1, 1].

Data: single-shot ``synth`` videos (320x240 at 24 fps, as the demo makes them) and spans of the sample
footage, probed by ``ProbeStage`` and decoded by ``DecodeStage`` with the demo's ``latents`` view, so training
sees what the encode stage sees. Clip lengths lie in ``clip_s``, whose lower end yields exactly ``frames``
frames (the view lowers its fps for longer clips). Held-out world clips come from their own fixed seed,
whatever ``seed`` is; held-out footage is the last ``heldout_s`` seconds of the first file.

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
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, model_validator

from dataengine.config import Config
from dataengine.encode.vae import VAEConfig, load_vae
from dataengine.model_cache import build_folder, cache_root, require_empty
from dataengine.records import Clip, Failure, Source, Video
from dataengine.stages import DecodeConfig, DecodeStage, ProbeStage, ViewConfig
from dataengine.world.footage import sample_footage
from dataengine.world.generate import random_spec, write_video
from trainer.core import Budget, cosine, warmup

if TYPE_CHECKING:
    import torch

HELDOUT_SEED = 1_000_003  # held-out clips draw from (HELDOUT_SEED, stream); training ones from (seed, stream)
_WORLD, _FOOTAGE, _ORDER = 0, 1, 2  # random streams
_VIEW = "latents"
Log = Callable[[str], None]


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
    frame_init: bool = Field(True, description="start as a per-frame autoencoder (see _per_frame_init)")
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


@dataclass
class Dataset:
    """Every clip decoded once, ``frames_NTHWC`` uint8 in memory; held-out footage is empty when off."""

    train: np.ndarray
    heldout_world: np.ndarray
    heldout_footage: np.ndarray
    train_footage: int  # the last clips of ``train``
    seconds: float


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    seconds: float
    loss: float
    psnr_db: dict[str, float | None]


# --- data -------------------------------------------------------------------------------------------------


def build_dataset(config: VAETrainConfig, log: Log = print) -> Dataset:
    """Training and held-out clips, each through probe + decode with ``config.view``.

    Raises:
        OSError: footage is on and could not be downloaded.
        RuntimeError: a clip failed to probe or decode (our own files: a bug or a broken ffmpeg).
    """
    t0 = time.perf_counter()
    shared = set(world_seeds(config, heldout=False)) & set(world_seeds(config, heldout=True))
    if shared:  # independent 32-bit draws: practically never
        raise RuntimeError(f"training and held-out world clips share spec seeds {sorted(shared)}")
    with tempfile.TemporaryDirectory(prefix="train-vae-") as tmp:
        rng = np.random.default_rng((config.seed, _WORLD))
        world = world_clips(config, rng, config.world_clips, Path(tmp) / "train")
        heldout = heldout_world(config, Path(tmp) / "heldout")
    footage, heldout_footage = footage_clips(config)
    seconds = time.perf_counter() - t0
    log(f"decoded {len(world)} world + {len(footage)} footage training clips, {len(heldout)} + "
        f"{len(heldout_footage)} held out, in {seconds:.0f} s")  # fmt: skip
    return Dataset(np.concatenate([world, footage]), heldout, heldout_footage, len(footage), seconds)


def world_clips(config: VAETrainConfig, rng: np.random.Generator, n: int, workdir: Path) -> np.ndarray:
    """``n`` single-shot synthetic videos drawn from ``rng``, written to ``workdir``, one whole clip each."""
    workdir.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(n):
        spec = random_spec(rng, max_shots=1, duration_range=config.clip_s)
        video = _probe(write_video(spec, workdir / f"world_{i:04d}.mp4"))
        clips.append(Clip.of(video, 0, 0.0, spec.duration_s))
    return _decode(config, clips)


def heldout_world(config: VAETrainConfig, workdir: Path) -> np.ndarray:
    """The held-out world clips: the same for every ``config.seed``."""
    rng = np.random.default_rng((HELDOUT_SEED, _WORLD))
    return world_clips(config, rng, config.heldout_world_clips, workdir)


def world_seeds(config: VAETrainConfig, heldout: bool) -> list[int]:
    """``VideoSpec.seed`` of every training (or held-out) world clip, without rendering them."""
    rng = np.random.default_rng((HELDOUT_SEED if heldout else config.seed, _WORLD))
    n = config.heldout_world_clips if heldout else config.world_clips
    return [random_spec(rng, max_shots=1, duration_range=config.clip_s).seed for _ in range(n)]


def footage_clips(config: VAETrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) random spans of the footage; held-out ones lie in the end of the first file."""
    fc = config.footage
    if fc.train_clips == 0 and fc.heldout_clips == 0:
        empty = np.zeros((0, config.frames, config.height, config.width, 3), np.uint8)
        return empty, empty
    videos = [_probe(p) for p in sample_footage(Path(fc.cache_dir or cache_root() / "footage"))]
    ends = [v.probe.duration_s - 0.1 for v in videos]  # clear of a short last frame
    split = ends[0] - fc.heldout_s
    ranges = [(0.0, split), *((0.0, end) for end in ends[1:])]
    rng, heldout_rng = (np.random.default_rng((s, _FOOTAGE)) for s in (config.seed, HELDOUT_SEED))
    train = [_span(rng, config.clip_s, videos, ranges, i) for i in range(fc.train_clips)]
    held = [
        _span(heldout_rng, config.clip_s, videos[:1], [(split, ends[0])], i) for i in range(fc.heldout_clips)
    ]
    return _decode(config, train), _decode(config, held)


def _span(
    rng: np.random.Generator,
    clip_s: tuple[float, float],
    videos: list[Video],
    ranges: list[tuple[float, float]],
    index: int,
) -> Clip:
    k = int(rng.integers(len(videos)))
    lo, hi = ranges[k]
    length = float(rng.uniform(clip_s[0], min(clip_s[1], hi - lo)))
    start = round(float(rng.uniform(lo, hi - length)), 3)
    return Clip.of(videos[k], index, start, round(start + length, 3))


def _probe(path: Path) -> Video:
    video = ProbeStage().probe(Source.from_uri(path))
    if isinstance(video, Failure):
        raise RuntimeError(f"probe failed on {path}: {video.reason}")
    return video


def _decode(config: VAETrainConfig, clips: list[Clip]) -> np.ndarray:
    out = np.empty((len(clips), config.frames, config.height, config.width, 3), np.uint8)
    stage = DecodeStage(DecodeConfig(views={_VIEW: config.view}))
    for i, decoded in enumerate(stage.process_batch(clips)):
        if isinstance(decoded, Failure):
            raise RuntimeError(f"decode failed on {decoded.uri} at {decoded.start_s} s: {decoded.reason}")
        frames_THWC = decoded.views[_VIEW].frames_THWC
        if frames_THWC.shape != out.shape[1:]:
            raise RuntimeError(f"{decoded.clip.uri}: decoded {frames_THWC.shape}, not {out.shape[1:]}")
        out[i] = frames_THWC
    return out


def _batch(rng: np.random.Generator, frames_NTHWC: np.ndarray, batch_size: int, crop: int) -> np.ndarray:
    """``frames_BTHWC``: random clips, each cropped at a random place and flipped left-right half the time."""
    _, _, h, w, _ = frames_NTHWC.shape
    out = []
    for i in rng.integers(len(frames_NTHWC), size=batch_size):
        y, x = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        clip_THWC = frames_NTHWC[i, :, y : y + crop, x : x + crop]
        out.append(clip_THWC[:, :, ::-1] if rng.random() < 0.5 else clip_THWC)
    return np.stack(out)


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
    rng = np.random.default_rng((config.seed, _ORDER))
    model.train()
    recent: list[float] = []
    steps, budget = 0, Budget(config.max_steps, config.minutes)
    for step, elapsed in budget.steps():
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, budget.progress(step, elapsed), config.warmup_steps)
        x_BCTHW = to_input(_batch(rng, train_NTHWC, config.batch_size, config.crop))
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
