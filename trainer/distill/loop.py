"""The training: build the student, train it on the pairs, save it."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataengine.caption.tiny_vlm import build_tiny_vlm
from dataengine.config import ConfigError
from trainer.core import Budget, cosine, plot_losses, warmup
from trainer.distill.config import GROUNDING_ATTENTION, PRESETS, RUN_RECORDS, DistillConfig
from trainer.distill.losses import dense_loss, digit_weights, weighted_loss, world_loss
from trainer.distill.pairs import Pair, run_pairs, world_pairs
from trainer.distill.targets import DENSE_CLASSES, DENSE_LOGGED
from trainer.distill.tokens import encode_pair, encoded_batches, tokenizer_corpus


@dataclass
class DistillResult:
    out: Path
    steps: int
    seconds: float
    final_loss: float
    pairs: int


def distill(config: DistillConfig, out: Path, pairs: Sequence[Pair] | None = None) -> DistillResult:
    """Build the student, train it on the pairs, save it to ``out`` (which must not exist or be empty;
    checked first: ``OutputExistsError``).

    Args:
        config: what to train.
        out: the student's HF folder; written in a temporary sibling and renamed when complete.
        pairs: the pairs to use; default from ``config.pairs``.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dataengine.model_cache import build_folder, require_empty

    require_empty(out)  # before the pairs and the training, not after
    device = _device(config.device)  # likewise
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    init_dir = _init_folder(config) if config.init is not None else None  # checked before any work
    if init_dir is not None and config.patch_size is not None:
        raise ConfigError(f"patch_size={config.patch_size}: a student trained on from init keeps its own")
    layers = _text_layers(config, init_dir)
    if config.grounding_weight and not config.grounding_layer < layers:
        raise ConfigError(f"grounding_layer={config.grounding_layer}: the student has {layers} layers")
    with tempfile.TemporaryDirectory(prefix="distill-") as tmp:
        if pairs is None:
            pairs = _pairs(config, Path(tmp))
        prepared_s = time.perf_counter() - started
        if init_dir is not None:
            student_dir = init_dir
        else:
            size = PRESETS[config.preset].model_copy(
                update={"seed": config.seed, "family": config.family, "vision_patch_size": config.patch_size}
            )
            corpus = tokenizer_corpus([p.caption for p in pairs])
            student_dir = build_tiny_vlm(Path(tmp) / "student", size, corpus=corpus)
        processor = AutoProcessor.from_pretrained(student_dir)
        torch.manual_seed(config.seed)
        attention = GROUNDING_ATTENTION if config.grounding_weight else None
        if attention:  # the vision tower stays sdpa on purpose: only the text model's attention is read
            logging.getLogger("transformers.integrations.sdpa_attention").setLevel(logging.ERROR)
        model = AutoModelForImageTextToText.from_pretrained(
            student_dir, dtype=torch.float32, attn_implementation=attention
        )
        if config.position_init == "sincos" or (config.position_init is None and config.init is None):
            sincos_positions(model, encode_pair(processor, pairs[0], config.prompt_id), config.position_rms)
        table = getattr(model.model.visual, "pos_embed", None)
        if config.freeze_positions and table is not None:
            table.weight.requires_grad_(False)
        model.to(device).train()
        log = _train(config, model, processor, pairs, started)

        def write(folder: Path) -> None:
            for item in student_dir.iterdir():  # processor, tokenizer, chat template, generation config
                if item.is_file() and item.suffix in (".json", ".jinja") and item.name not in RUN_RECORDS:
                    shutil.copy2(item, folder / item.name)
            model.eval()
            model.cpu()  # from the training device, if another
            model.to(getattr(torch, config.save_dtype)).save_pretrained(folder)
            summary = {
                "config": config.model_dump(mode="json"), "pairs": len(pairs), "steps": log.steps,
                "prepare_s": round(prepared_s, 1), "train_s": round(log.seconds, 1),
                "final_loss": log.recent_loss(), "losses": log.losses,
            }  # fmt: skip
            if log.grounding:
                summary["grounding"] = log.grounding
            if log.dense:
                summary["dense"] = log.dense
            if log.tower_warmup:
                summary["tower_warmup"] = log.tower_warmup
            (folder / "distill.json").write_text(json.dumps(summary, indent=1) + "\n")
            title, ylabel = "student distillation", "caption token loss"
            plot_losses(folder / "loss_curve.png", log.losses, ylabel=ylabel, title=title, log_scale=True)

        build_folder(out, write)
    return DistillResult(out, log.steps, time.perf_counter() - started, log.recent_loss(), len(pairs))


def _device(name: str) -> Any:
    """``name`` as a torch device the student can train on here, or a ``ConfigError`` that says why not."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name!r} is not a torch device (cpu, cuda, cuda:1, ...): {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: torch sees no CUDA GPU on this machine; use device=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def _to(value: Any, device: Any) -> Any:
    """``value`` (a batch: tensors, and lists or tuples of them or None) with every tensor on ``device``."""
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value.to(device, non_blocking=True) if hasattr(value, "to") else value


def _text_layers(config: DistillConfig, init_dir: Path | None) -> int:
    """How many text layers the student has: its init folder's, or its preset's."""
    if init_dir is None:
        return PRESETS[config.preset].num_layers
    saved = json.loads((init_dir / "config.json").read_text())
    return int(saved.get("text_config", saved).get("num_hidden_layers", saved.get("num_hidden_layers")))


def _init_folder(config: DistillConfig) -> Path:
    folder = Path(str(config.init))
    config_json = folder / "config.json"
    if not config_json.is_file():
        raise ConfigError(f"init={folder} is not a model folder (no config.json)")
    family = json.loads(config_json.read_text()).get("model_type")
    if family != config.family:
        raise ConfigError(f"init={folder} is a {family} student: pass --family {family} to go on training it")
    return folder


def _pairs(config: DistillConfig, work_dir: Path) -> list[Pair]:
    if config.pairs == "world":
        return world_pairs(config.world_clips, config.seed, config.view, work_dir, config.workers)
    return run_pairs(Path(config.pairs), config.view)


@dataclass
class TrainLog:
    steps: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    grounding: list[tuple[int, float]] = field(default_factory=list)  # attention mass on the object
    dense: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # the dense head's accuracies
    tower_warmup: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # its accuracies then

    def recent_loss(self) -> float:
        tail = [loss for _, loss in self.losses[-5:]]
        return round(float(np.mean(tail)), 4) if tail else math.nan


def batch_plan(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size].tolist()
        if n < batch_size:
            yield rng.choice(n, batch_size).tolist()


def make_optimizer(model: Any, config: DistillConfig) -> Any:
    """AdamW with weight decay on the matrices (the vision patch embedding's convolution among them) but not
    on token and position tables, norms or biases."""
    import torch

    def decayed(name: str, param: Any) -> bool:
        return param.ndim >= 2 and ("embed" not in name or "patch_embed" in name)

    params = list(model.named_parameters())
    decay = [p for n, p in params if decayed(n, p)]
    rest = [p for n, p in params if not decayed(n, p)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98),
    )  # fmt: skip


def add_dense_head(model: Any, optimizer: Any, config: DistillConfig) -> Any:
    """With ``dense_weight``, the dense head (``world_loss``), its parameters added to ``optimizer``:
    trained beside the student, never saved, it only shapes the vision tower. Otherwise None."""
    import torch

    if not config.dense_weight:
        return None
    head = torch.nn.Linear(model.config.get_text_config().hidden_size, sum(DENSE_CLASSES))
    head.to(next(model.parameters()).device)
    optimizer.add_param_group({"params": list(head.parameters()), "weight_decay": 0.0})
    return head


def _train(
    config: DistillConfig, model: Any, processor: Any, pairs: Sequence[Pair], started: float
) -> TrainLog:
    import torch
    from rich.progress import Progress

    device = next(model.parameters()).device
    weights = digit_weights(processor.tokenizer, config.digit_weight).to(device)
    optimizer = make_optimizer(model, config)
    dense_head = add_dense_head(model, optimizer, config)
    log = TrainLog()
    if config.tower_warmup_steps:
        warm_up_tower(config, model, processor, pairs, optimizer, dense_head, log)
    budget = Budget(config.max_steps, config.minutes)
    window: list[float] = []
    plan = batch_plan(len(pairs), config.batch_size, config.seed)
    world = config.world_targets
    batches = encoded_batches(processor, pairs, plan, config.prompt_id, world_targets=world)
    measured: dict[str, list[float]] = {key: [] for key in ("attention", *DENSE_LOGGED)}
    with Progress(transient=True) as progress, contextlib.closing(batches):
        task = progress.add_task("distill", total=budget.seconds if budget.timed else None)
        for cpu_batch, (step, elapsed) in zip(batches, budget.steps(first=1), strict=False):
            batch = _to(cpu_batch, device)
            # the schedule is laid out over the steps the budget will allow, re-estimated as they run
            lr = config.lr * lr_factor(config, step, budget.expected_steps(step, elapsed))
            for group in optimizer.param_groups:
                group["lr"] = lr
            if world:
                loss, caption_loss, step_measured = world_loss(model, batch, weights, config, dense_head)
                for key, value in step_measured.items():
                    measured[key].append(value)
            else:
                loss = caption_loss = weighted_loss(model, batch, weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window.append(caption_loss.item())  # the log and its curve are the caption loss
            log.steps = step
            if step % config.log_every == 0:
                log.losses.append((step, round(float(np.mean(window)), 4)))
                window.clear()
                per_step = budget.elapsed() / step
                looks = ""
                if measured["attention"]:
                    log.grounding.append((step, round(float(np.mean(measured["attention"])), 4)))
                    looks += f"  attention on the object {log.grounding[-1][1]:.3f}"
                if read := {k: round(float(np.mean(measured[k])), 4) for k in DENSE_LOGGED if measured[k]}:
                    log.dense.append((step, read))
                    looks += "  tokens read right " + " ".join(f"{k} {v:.2f}" for k, v in read.items())
                for values in measured.values():
                    values.clear()
                progress.console.print(
                    f"step {step}  loss {log.losses[-1][1]:.4f}{looks}  lr {lr:.2e}  {per_step:.2f} s/step  "
                    f"{time.perf_counter() - started:.0f} s"
                )
            progress.update(task, completed=min(budget.elapsed(), budget.seconds))
    if window:  # the steps since the last log line
        log.losses.append((log.steps, round(float(np.mean(window)), 4)))
    log.seconds = budget.elapsed()
    return log


def warm_up_tower(
    config: DistillConfig,
    model: Any,
    processor: Any,
    pairs: Sequence[Pair],
    optimizer: Any,
    dense_head: Any,
    log: TrainLog,
) -> None:
    """``tower_warmup_steps`` steps of the dense loss on the vision tower's merged tokens alone (the text
    model neither runs nor changes), at ``tower_warmup_lr``; the readings' accuracies go to ``log``."""
    import torch
    from rich.progress import Progress

    if any(pair.classes is None for pair in pairs):
        raise ConfigError("tower_warmup_steps reads the world's dense targets: it needs --pairs world")
    device = next(model.parameters()).device
    visual = model.model.visual
    tower = [p for p in visual.parameters() if p.requires_grad] + list(dense_head.parameters())
    for group in optimizer.param_groups:
        group["lr"] = config.tower_warmup_lr
    plan = batch_plan(len(pairs), config.batch_size, config.seed + 1)
    batches = encoded_batches(processor, pairs, plan, config.prompt_id, world_targets=True)
    measured: dict[str, list[float]] = {key: [] for key in DENSE_LOGGED}
    budget = Budget(config.tower_warmup_steps, minutes=None)
    with Progress(transient=True) as progress, contextlib.closing(batches):
        task = progress.add_task("tower warm-up", total=config.tower_warmup_steps)
        for cpu_batch, (step, _) in zip(batches, budget.steps(first=1), strict=False):
            batch = _to(cpu_batch, device)
            out = visual(batch["pixel_values_videos"], grid_thw=batch["video_grid_thw"])
            tokens = getattr(out, "pooler_output", out)  # Qwen2.5-VL's tower returns the merged tokens
            loss, read = dense_loss(dense_head, tokens, torch.cat(batch["dense"]))
            if loss is not None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(tower, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in read.items():
                measured[key].append(value)
            if step % config.log_every == 0 or step == config.tower_warmup_steps:
                read_now = {k: round(float(np.mean(v)), 4) for k, v in measured.items() if v}
                log.tower_warmup.append((step, read_now))
                for values in measured.values():
                    values.clear()
                progress.console.print(
                    f"tower warm-up step {step}  tokens read right "
                    + " ".join(f"{k} {v:.2f}" for k, v in read_now.items())
                    + f"  {budget.elapsed() / step:.2f} s/step"
                )
            progress.update(task, completed=step)


def sincos_positions(model: Any, example: dict[str, Any], rms: float | None = None) -> None:
    """Set a Qwen3-VL vision tower's position table (a ``side x side`` grid the tower interpolates to each
    frame's patch grid) to a 2-D sine-cosine table, half the channels for rows and half for columns, with
    root-mean-square ``rms``, by default that of the patch embeddings of ``example``'s frames. No-op for other
    families."""
    import torch

    visual = model.model.visual
    table = getattr(visual, "pos_embed", None)
    if table is None:
        return
    n, dim = table.weight.shape
    side = math.isqrt(n)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    quarter = dim // 4
    freqs = side ** (-torch.arange(quarter) / quarter)  # wavelengths from 2 pi cells to ~side x 2 pi

    def encode(pos: Any) -> Any:
        angles = pos.float()[..., None] * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    sincos = torch.cat([encode(rows), encode(cols)], dim=-1).reshape(n, -1)
    sincos = torch.nn.functional.pad(sincos, (0, dim - sincos.shape[1]))
    with torch.no_grad():
        scale = rms or visual.patch_embed(example["pixel_values_videos"]).pow(2).mean().sqrt()
        table.weight.copy_(sincos * scale / sincos.pow(2).mean().sqrt())


def lr_factor(config: DistillConfig, step: int, expected_steps: float) -> float:
    """Linear warm-up over the first ``warmup_steps`` steps (``step`` counts from 1), then cosine down to
    ``min_lr_ratio`` at ``expected_steps``."""
    if step <= config.warmup_steps:
        return warmup(step - 1, config.warmup_steps)
    progress = (step - config.warmup_steps) / max(1.0, expected_steps - config.warmup_steps)
    return cosine(progress, config.min_lr_ratio)
