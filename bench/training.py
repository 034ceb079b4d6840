"""Training steps/s streaming from shards vs the same model on in-memory batches, side by side in one run;
on a GPU, the MFU of DiT-B/2 in bf16.

    .venv/bin/python bench/training.py                # 512 samples, tiny DiT, 1 and 2 workers, ~80 s
    .venv/bin/python bench/training.py --quick        # 128 samples, ~50 s
    .venv/bin/python bench/training.py --threads 1 --workers 0 1 2 --repeat 5 --json
    .venv/bin/python bench/training.py --parts mfu    # on a GPU box: DiT-B/2 bf16 MFU, eager and compiled
    .venv/bin/python bench/training.py                # on a GPU box: both parts, the stream part with DiT-B

(The file is not called ``trainer.py``: run as a script, ``bench/`` comes first on ``sys.path`` and that name
would hide the ``trainer`` package; mypy would also see two modules named ``trainer``.)

Shards are written first (untimed) with ``ShardWriter``, 64 samples each, members as the engine writes them:
``latents.npy`` (float16, by default 16x5x16x16: a small Wan-like latent), ``text_emb.npy`` (float16, 77x384)
with ``text_mask.npy``, ``txt`` and a ``json`` holding the VAE stats that ``decode`` normalises with.

* stream: one ``Trainer`` of the ``demo`` recipe (model preset ``--preset``, default tiny on CPU and B on a
  GPU; ``precision=auto``: fp32 on CPU, bf16 on GPU), ``data.batch_size`` 8. streaming: a fresh
  ``build_loader`` DataLoader of ``--workers`` workers, 5 warm-up steps (worker start-up included there),
  then the wall time of ``--steps`` calls of ``trainer.train_step([next(batches)])``, waiting for batches
  included. in-memory (the speed of light: a loader that costs nothing): the same trainer on batches taken
  from the loader beforehand (untimed) and cycled. ratio = streaming / in-memory steps/s, goal >= 0.95: the
  loader never stalls the step. loader alone: batches/s of the same DataLoader with no training, for
  context; headroom = loader alone / in-memory steps/s (> 1: enough when nothing else wants the cores).
  The two sides alternate order between repeats; best of ``--repeat``.
* mfu (CUDA only; skipped on CPU): ``--mfu-preset`` (B: DiT-B/2) in bf16, batch ``--mfu-batch-size`` of
  ``--mfu-latent-shape`` latents, on in-memory batches, eager and with ``torch.compile`` (the ``gpu-dit-b``
  recipe compiles). MFU = ``flops_per_sample`` (video tokens from the latent shape and the patch, 77 text
  tokens) x batch / step time / the device's dense bf16 peak (``PEAK_FLOPS``); goal >= 0.40.

On a CPU-only machine the loader's workers and the training step compete for the same cores (on a 2-core
box: torch's 2 intra-op threads plus 1 or 2 workers), so streaming loses steps to decoding that a GPU box,
whose step runs on the GPU and whose host has cores to spare, would not lose. There, a ratio below the goal
with a large headroom means core competition, not a slow loader; ``--threads`` (cores - workers) gives each
worker its own core and shows the loader alone: the step is slower, the ratio is then the loader's. On CPU
use ``data.num_workers=1`` (a tiny DiT needs one batch per ~70 ms; one worker makes 120-150/s); on a GPU box,
enough workers for a headroom of 2 or more with the real model. Presets above tiny take seconds per step
on 2 cores: use them on a GPU. Timings are reported, never asserted; ``spread`` (worst side's median/best
- 1) flags noise, such as another job on the machine.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import base_parser, ratio_cell
from rich.console import Console
from rich.table import Table

from dataengine.config import apply_overrides
from dataengine.shards import ShardConfig, ShardWriter
from trainer.dit.data import build_loader
from trainer.dit.model import flops_per_sample
from trainer.dit.recipes import demo
from trainer.dit.train import PEAK_FLOPS, TrainConfig, Trainer

Row = dict[str, Any]
Batch = dict[str, Any]
PARTS = ("stream", "mfu")
_TEXT_LEN, _TEXT_DIM = 77, 384
_PER_SHARD = 64
_WARMUP = 5
_CACHED = 8  # distinct in-memory batches, cycled
_STREAM_GOAL, _MFU_GOAL = 0.95, 0.40


def _vae_info(channels: int) -> dict[str, Any]:
    """The VAE record ``decode`` normalises with: Wan-style per-channel mean and std."""
    rng = np.random.default_rng(1)
    return {
        "model": "synthetic-wan", "class": "AutoencoderKLWan", "kind": "wan", "latent_channels": channels,
        "spatial_compression": 8, "temporal_compression": 4, "scaling_factor": None, "shift_factor": None,
        "latents_mean": rng.normal(0, 0.5, channels).round(4).tolist(),
        "latents_std": rng.uniform(0.5, 3.0, channels).round(4).tolist(),
    }  # fmt: skip


def _write_shards(out: Path, n: int, shape: tuple[int, ...]) -> tuple[Path, float]:
    """``n`` samples in shards of ``_PER_SHARD`` (fewer when ``n`` is small: >= 4 shards); returns the run
    folder and the shard bytes per sample."""
    rng = np.random.default_rng(0)
    vae = _vae_info(shape[0])
    caption = "A red circle moves right across a blue checkered background. " * 8
    with ShardWriter(out, ShardConfig(max_samples=min(_PER_SHARD, max(1, n // 4)))) as writer:
        for i in range(n):
            key = f"{i:032x}"
            valid = int(rng.integers(8, _TEXT_LEN + 1))
            sample = {
                "latents.npy": rng.standard_normal(shape).astype(np.float16),
                "text_emb.npy": rng.standard_normal((_TEXT_LEN, _TEXT_DIM)).astype(np.float16),
                "text_mask.npy": np.arange(_TEXT_LEN) < valid,
                "txt": caption,
                "json": {"clip_id": key, "fps": 16.0, "vae": vae, "text_encoder": None},
            }
            writer.write(key, sample, {"clip_id": key, "caption": caption, "latent_shape": list(shape)})
    return out, sum(Path(p).stat().st_size for p in writer.written) / n


def _config(shards: Path, preset: str, batch_size: int, workers: int, *extra: str) -> TrainConfig:
    """The demo recipe on ``shards`` with the benchmark's model, batch and loader."""
    overrides = [
        f"data.shards={json.dumps([str(shards)])}", f"model.preset={preset}", f"data.batch_size={batch_size}",
        f"data.num_workers={workers}", "precision=auto", "steps=1000000", *extra,
    ]  # fmt: skip
    return apply_overrides(demo(), overrides)


def _loader(trainer: Trainer, workers: int) -> Iterator[Batch]:
    data = trainer.config.data.model_copy(update={"num_workers": workers})
    return iter(build_loader(data, rank=0, world=1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _steps(trainer: Trainer, batches: Iterator[Batch], steps: int) -> float:
    """Seconds for ``steps`` training steps after ``_WARMUP`` untimed ones."""
    for _ in range(_WARMUP):
        trainer.train_step([next(batches)])
    _sync(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step([next(batches)])
    _sync(trainer.device)
    return time.perf_counter() - start


def _streaming(trainer: Trainer, workers: int, steps: int) -> float:
    return _steps(trainer, _loader(trainer, workers), steps)  # the loader's workers end with the iterator


def _loader_alone(trainer: Trainer, workers: int, steps: int) -> float:
    batches = _loader(trainer, workers)
    for _ in range(_WARMUP):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return time.perf_counter() - start


def _spread(walls: dict[str, list[float]]) -> float:
    return max(statistics.median(v) / min(v) - 1 for v in walls.values())


def _stream_row(trainer: Trainer, cached: list[Batch], workers: int, steps: int, repeat: int) -> Row:
    walls: dict[str, list[float]] = {"stream": [], "memory": [], "loader": []}
    for r in range(repeat):
        for side in ("stream", "memory") if r % 2 == 0 else ("memory", "stream"):
            if side == "stream":
                walls["stream"].append(_streaming(trainer, workers, steps))
            else:
                walls["memory"].append(_steps(trainer, itertools.cycle(cached), steps))
        walls["loader"].append(_loader_alone(trainer, workers, steps))
    rate = {k: steps / min(v) for k, v in walls.items()}
    return {
        "workers": workers, "preset": trainer.config.model.preset, "batch": trainer.config.data.batch_size,
        "loader_batches_s": rate["loader"], "memory_steps_s": rate["memory"],
        "stream_steps_s": rate["stream"],
        "ratio": rate["stream"] / rate["memory"], "headroom": rate["loader"] / rate["memory"],
        "spread": _spread(walls),
    }  # fmt: skip


def _stream_part(shards: Path, out: Path, args: Any) -> list[Row]:
    trainer = Trainer(_config(shards, args.preset, args.batch_size, max(args.workers), *args.set), out)
    batches = _loader(trainer, 0)
    cached = [next(batches) for _ in range(_CACHED)]
    return [_stream_row(trainer, cached, w, args.steps, args.repeat) for w in args.workers]


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _mfu_part(shards: Path, out: Path, args: Any) -> list[Row]:
    rows = []
    for compiled in (False, True) if args.mfu_compile else (False,):
        extra = ("precision=bf16", f"compile={json.dumps(compiled)}", *args.set)
        trainer = Trainer(_config(shards, args.mfu_preset, args.mfu_batch_size, 0, *extra), out)
        batches = _loader(trainer, 0)
        cached = [next(batches) for _ in range(2)]
        walls = [_steps(trainer, itertools.cycle(cached), args.steps) for _ in range(args.repeat)]
        best = min(walls) / args.steps
        cfg, shape = trainer.model.config, cached[0]["latents_BCTHW"].shape
        tokens = int(np.prod([n // p for n, p in zip(shape[2:], cfg.patch, strict=True)]))
        flops = flops_per_sample(cfg, tokens, cached[0]["text_BLD"].shape[1]) * shape[0]
        peak = _peak_flops(trainer.device)
        rows.append({
            "device": torch.cuda.get_device_name(trainer.device) if peak else str(trainer.device),
            "preset": args.mfu_preset, "compile": compiled,
            "batch": shape[0], "tokens": tokens, "step_ms": 1e3 * best, "tflops": flops / best / 1e12,
            "mfu": flops / best / peak if peak else None, "spread": statistics.median(walls) / min(walls) - 1,
        })  # fmt: skip
        del trainer
    return rows


def _stream_table(rows: list[Row], args: Any, sample_kb: float) -> Table:
    caption = (
        f"{args.samples} samples of {args.latent_shape} float16 latents + 77x384 text "
        f"({sample_kb:.0f} kB each in the shards); {args.steps} steps after {_WARMUP} warm-up, best of "
        f"{args.repeat}; {torch.get_num_threads()} torch threads in the training process, {os.cpu_count()} "
        f"cores. ratio = streaming / in-memory steps/s, goal >= {_STREAM_GOAL}; headroom = loader alone / "
        "in-memory steps/s. On a CPU box the loader's workers and the step compete for the same cores."
    )
    table = Table(title="trainer: streaming from shards vs in-memory batches", caption=caption)
    for col in ("workers", "preset", "batch", "loader alone b/s", "in-memory steps/s", "streaming steps/s",
                "ratio", "headroom", "spread"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["workers"]), r["preset"], str(r["batch"]), f"{r['loader_batches_s']:.1f}",
            f"{r['memory_steps_s']:.1f}", f"{r['stream_steps_s']:.1f}", ratio_cell(r["ratio"], _STREAM_GOAL),
            f"{r['headroom']:.2f}", f"{r['spread']:.0%}",
        )  # fmt: skip
    return table


def _mfu_table(rows: list[Row], args: Any) -> Table:
    caption = (
        f"bf16, {args.mfu_latent_shape} latents, 77 text tokens, in-memory batches, {args.steps} steps after "
        f"{_WARMUP} warm-up, best of {args.repeat}. MFU = flops_per_sample x batch / step / dense bf16 peak; "
        f"goal >= {_MFU_GOAL}"
    )
    table = Table(title=f"trainer: DiT-{args.mfu_preset}/2 MFU", caption=caption)
    for col in ("device", "compile", "batch", "tokens/sample", "step ms", "TFLOP/s", "MFU", "spread"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for r in rows:
        mfu = ratio_cell(r["mfu"], _MFU_GOAL) if r["mfu"] is not None else "no peak known"
        table.add_row(
            r["device"], str(r["compile"]), str(r["batch"]), str(r["tokens"]), f"{r['step_ms']:.1f}",
            f"{r['tflops']:.1f}", mfu, f"{r['spread']:.0%}",
        )  # fmt: skip
    return table


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    parser.add_argument("--samples", type=int, help="samples in the shards (512; quick: 128)")
    parser.add_argument("--quick", action="store_true", help="128 samples")
    parser.add_argument("--latent-shape", default="16,5,16,16", help="C,T,H,W of each sample's latents")
    parser.add_argument("--preset", help="DiT preset of the stream part (tiny on CPU, B on GPU)")
    parser.add_argument("--batch-size", type=int, default=8, help="data.batch_size of the stream part")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2],
        help="data.num_workers, one row each (1 2: this machine has 2 cores, one is the step's)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--threads", type=int, help="torch threads of the trainer (torch's default)")
    parser.add_argument("--mfu-preset", default="B", help="DiT preset of the mfu part")
    parser.add_argument("--mfu-batch-size", type=int, default=32, help="batch of the mfu part")
    parser.add_argument("--mfu-latent-shape", default="16,5,32,32", help="C,T,H,W of the mfu part")
    parser.add_argument("--no-compile", dest="mfu_compile", action="store_false", help="mfu: eager only")
    parser.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides key=value, both parts")
    args = parser.parse_args(argv)
    args.samples = args.samples or (128 if args.quick else 512)
    args.preset = args.preset or ("B" if torch.cuda.is_available() else "tiny")
    sizes = (args.repeat, args.samples, args.steps, args.batch_size, args.mfu_batch_size, args.threads or 1)
    if min(sizes) < 1:
        parser.error("--repeat, --samples, --steps, --threads and batch sizes must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    console, report = Console(width=120), {"repeat": args.repeat, "stream": None, "mfu": None}
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        work = Path(tmp)
        if "stream" in args.parts:
            shards, sample_bytes = _write_shards(work / "stream", args.samples, _shape(args.latent_shape))
            report["stream"] = _stream_part(shards, work / "out-stream", args)
            console.print(_stream_table(report["stream"], args, sample_bytes / 1e3))
        if "mfu" in args.parts and torch.cuda.is_available():
            shards, _ = _write_shards(work / "mfu", 4 * args.mfu_batch_size, _shape(args.mfu_latent_shape))
            report["mfu"] = _mfu_part(shards, work / "out-mfu", args)
            console.print(_mfu_table(report["mfu"], args))
        elif "mfu" in args.parts:
            console.print("mfu: skipped, no CUDA GPU here (run `bench/training.py --parts mfu` on a GPU box)")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
