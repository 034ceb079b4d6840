"""The train loop: AdamW with warmup + cosine, gradient clipping and accumulation, EMA, bf16 autocast on GPU,
atomic keep-last-N checkpoints that hold everything a restart needs, and ``OUT/metrics.jsonl``.

    dataengine train --shards out/run --out out/ckpt --steps 200                       # CPU, demo recipe
    torchrun --nproc_per_node 8 --no-python dataengine train --shards 's3://b/run/shards/*.tar' \\
        --out ck --steps 100000 --recipe gpu-dit-b                                      # DDP on one node

Resume: running again with the same ``--out`` loads the latest checkpoint (model, EMA, optimizer, schedule,
noise generator, data position) and continues: 20 steps then 20 more equal 40 steps.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field

from dataengine.config import Config
from trainer.core import cosine, warmup, write_atomically
from trainer.dit.data import DataConfig, build_loader, peek
from trainer.dit.flow import FlowConfig, flow_loss, training_inputs
from trainer.dit.model import DiT, build_dit, flops_per_sample

CKPT_DIR, METRICS = "checkpoints", "metrics.jsonl"
# Dense bf16 tensor-core peaks (FLOP/s) for the MFU estimate; other devices report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


class ModelConfig(Config):
    preset: str = "tiny"
    patch: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    grad_checkpointing: bool = False


class OptimConfig(Config):
    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a share of lr")
    grad_clip: float = Field(1.0, gt=0)
    accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    schedule_steps: int | None = Field(
        None, ge=1, description="cosine horizon; None: the run's --steps (then a longer rerun reshapes it)"
    )


class TrainConfig(Config):
    name: str
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    steps: int = Field(1000, ge=1)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    log_every: int = Field(10, ge=1)
    ckpt_every: int = Field(100, ge=1)
    keep_last: int = Field(3, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    compile: bool = False
    device: str = Field("auto", description="auto: cuda when available (the local rank's GPU), else cpu")
    seed: int = 0


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def setup(cls, device_type: str) -> Dist:
        """Join the process group torchrun or Ray Train describes in the environment (one process: none)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        return cls()


def lr_factor(step: int, config: OptimConfig, total: int) -> float:
    """Linear warmup to 1 (``step`` counts from 0), then cosine down to ``min_lr_ratio`` at ``total``."""
    if step < config.warmup_steps:
        return warmup(step, config.warmup_steps)
    return cosine((step - config.warmup_steps) / max(1, total - config.warmup_steps), config.min_lr_ratio)


class Trainer:
    """Owns the model, EMA, optimizer, noise generator and data position of one run in ``out_dir``."""

    def __init__(self, config: TrainConfig, out_dir: Path) -> None:
        self.config, self.out_dir = config, Path(out_dir)
        self.device = self._device()
        self.dist = Dist.setup(self.device.type)
        self.step = 0
        self.facts = peek(config.data)
        torch.manual_seed(config.seed)
        self.model = self.build_model()
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.optim.lr, betas=config.optim.betas,
            weight_decay=config.optim.weight_decay,
        )  # fmt: skip
        self.generator = torch.Generator(self.device).manual_seed(config.seed * 7919 + self.dist.rank)
        self.wrapped = self._wrap(self.model)

    # --- build ------------------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        if self.config.device != "auto":
            return torch.device(self.config.device)
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def build_model(self) -> DiT:
        m = self.config.model
        model = build_dit(
            m.preset, self.facts["latent_channels"], self.facts["text_dim"], patch=m.patch, qk_norm=m.qk_norm,
            grad_checkpointing=m.grad_checkpointing,
        )  # fmt: skip
        return model.to(self.device)

    def _wrap(self, model: DiT) -> torch.nn.Module:
        wrapped: torch.nn.Module = model
        if self.config.compile:
            wrapped = torch.compile(wrapped)  # type: ignore[assignment]
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = torch.nn.parallel.DistributedDataParallel(wrapped, device_ids=ids)
        return wrapped

    @property
    def autocast(self) -> Any:
        bf16 = self.config.precision == "bf16" or (
            self.config.precision == "auto" and self.device.type == "cuda"
        )
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    # --- state ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "batches_consumed": self.step * self.config.optim.accum_steps,
            "config": self.config.model_dump(mode="json"),
            "facts": self.facts,
            "model_config": self.model.config.model_dump(mode="json"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def save(self) -> Path:
        """Atomically write ``checkpoints/step_NNNNNNNN.pt`` (rank 0) and keep the last ``keep_last``."""
        folder = self.out_dir / CKPT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        final = write_atomically(
            checkpoint_path(self.out_dir, self.step), lambda tmp: torch.save(self.state_dict(), tmp)
        )
        for old in sorted(folder.glob("step_*.pt"))[: -self.config.keep_last]:
            old.unlink()
        return final

    def resume(self) -> bool:
        """Load the latest checkpoint in ``out_dir`` if there is one; metrics after it are dropped."""
        latest = latest_checkpoint(self.out_dir)
        if latest is None:
            return False
        self.load_state_dict(torch.load(latest, map_location=self.device, weights_only=False))
        _truncate_metrics(self.out_dir / METRICS, self.step)
        return True

    # --- steps ------------------------------------------------------------------------------------------

    def train_step(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step over ``accum_steps`` micro-batches; returns loss, grad norm and lr."""
        self.model.train()
        for group in self.optimizer.param_groups:
            horizon = self.config.optim.schedule_steps or self.config.steps
            group["lr"] = self.config.optim.lr * lr_factor(self.step, self.config.optim, horizon)
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or self.dist.world == 1
            context = nullcontext() if sync else self.wrapped.no_sync()  # type: ignore[operator]
            with context:
                loss = self._loss(batch) / len(batches)
                loss.backward()
            total += loss.detach()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()
        self.step += 1
        return {"loss": float(total), "grad_norm": float(norm), "lr": self.optimizer.param_groups[0]["lr"]}

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        dev = self.device
        x0 = batch["latents_BCTHW"].to(dev, non_blocking=True)
        x_t, t_B, target, drop_B = training_inputs(x0, self.config.flow, self.generator)
        text, mask = (
            batch["text_BLD"].to(dev, non_blocking=True),
            batch["text_mask_BL"].to(dev, non_blocking=True),
        )
        with self.autocast:
            velocity = self.wrapped(x_t, t_B, text, mask, drop_text_B=drop_B)
        return flow_loss(velocity, target)

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))  # short runs: warm EMA
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1 - decay)

    # --- the loop ---------------------------------------------------------------------------------------

    def fit(self) -> Path:
        """Train (or resume) until ``config.steps``; returns the last checkpoint."""
        self.resume()
        accum = self.config.optim.accum_steps
        loader = build_loader(self.config.data, self.dist.rank, self.dist.world, self.step * accum, accum)
        batches = iter(loader)
        logger = MetricsLogger(self, self.out_dir / METRICS) if self.dist.rank == 0 else None
        last = latest_checkpoint(self.out_dir)
        while self.step < self.config.steps:
            micro = [next(batches) for _ in range(accum)]
            metrics = self.train_step(micro)
            if logger is not None:
                samples, shape = sum(len(b["keys"]) for b in micro), micro[0]["latents_BCTHW"].shape
                logger.step(metrics, samples, shape, micro[0]["text_BLD"].shape[1])
            if self.step % self.config.ckpt_every == 0 or self.step == self.config.steps:
                last = self.save() if self.dist.rank == 0 else checkpoint_path(self.out_dir, self.step)
        if last is None:
            raise ValueError(
                f"nothing to do: {self.out_dir} is at step {self.step} >= steps {self.config.steps}"
            )
        return last


class MetricsLogger:
    """Appends one JSON line per logged step: loss (mean since the last line), lr, grad norm, samples/s, MFU
    (GPU), iterations/day."""

    def __init__(self, trainer: Trainer, path: Path) -> None:
        self.trainer, self.path = trainer, path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.window: list[
            tuple[float, int, float]
        ] = []  # (seconds, samples, loss) per step since the last line
        self.last = time.perf_counter()

    def step(self, metrics: dict[str, float], samples: int, shape: torch.Size, text_tokens: int) -> None:
        now = time.perf_counter()
        self.window.append((now - self.last, samples, metrics["loss"]))
        self.last = now
        t = self.trainer
        if t.step % t.config.log_every and t.step != t.config.steps:
            return
        seconds = sum(s for s, _, _ in self.window)
        rate = sum(n for _, n, _ in self.window) * t.dist.world / seconds
        metrics = {**metrics, "loss": sum(loss for _, _, loss in self.window) / len(self.window)}
        line = {
            "step": t.step,
            **metrics,
            "samples_per_s": rate,
            "iters_per_day": 86400 * len(self.window) / seconds,
        }
        mfu = self._mfu(rate, shape, text_tokens)
        if mfu is not None:
            line["mfu"] = mfu
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        self.window = []

    def _mfu(self, samples_per_s: float, shape: torch.Size, text_tokens: int) -> float | None:
        t = self.trainer
        if t.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(t.device)
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        if peak is None:
            return None
        pt, ph, pw = t.model.config.patch
        tokens = (shape[2] // pt) * (shape[3] // ph) * (shape[4] // pw)
        return flops_per_sample(t.model.config, tokens, text_tokens) * samples_per_s / (peak * t.dist.world)


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CKPT_DIR / f"step_{step:08d}.pt"


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((Path(out_dir) / CKPT_DIR).glob("step_*.pt"))
    return found[-1] if found else None


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (a crash between a log line and the next checkpoint)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    write_atomically(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept)))


def iter_metrics(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
