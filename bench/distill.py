"""Captioner distillation: student training steps/s as ``distill()`` runs them (every batch tokenized while
training, in a DataLoader worker process) vs the same model and optimizer on batches tokenized beforehand,
side by side in one run.

    .venv/bin/python bench/distill.py                  # 64 pairs, qwen3_vl tiny, batch 8, 10 steps, ~100 s
    .venv/bin/python bench/distill.py --quick --threads 1            # 16 pairs, 4 steps, best of 1, ~35 s
    .venv/bin/python bench/distill.py --family qwen2_5_vl qwen3_vl --quick --threads 1        # ~45 s
    .venv/bin/python bench/distill.py --preset small --batch-size 4 --repeat 5 --json
    .venv/bin/python bench/distill.py --loss plain grounded dense --threads 1       # the three steps, ~5 min
    .venv/bin/python bench/distill.py --patch-size 16 8 --loss dense --threads 1     # what 8-px patches cost

Setup (untimed): ``--pairs`` world pairs (``world_pairs``, one worker) through the default ``DistillConfig``
caption view (2 fps, at most 8 frames, short side 112), then per ``--family`` a student as ``distill()``
builds one: ``build_tiny_vlm`` of ``PRESETS[--preset]`` with that family and a tokenizer trained on
``tokenizer_corpus`` of the pairs' captions, loaded back with ``AutoProcessor`` and
``AutoModelForImageTextToText`` (float32, train mode), an AdamW of ``distill()``'s parameter groups, lr and
betas, and ``digit_weights`` of the default ``digit_weight``. The batches are the first ``_WARMUP +
--steps`` that ``distill()``'s own sampler (``batch_plan``) draws, the same ones on both sides.

* distill: what ``distill()`` does: batches from ``encoded_batches`` (``collate([encode_pair(processor,
  pair, "dense-v1") ...], pad_id)`` of each batch's pairs: chat template, video processor, answer masking;
  in one worker process, two batches ahead), and per step ``weighted_loss``, backward,
  ``clip_grad_norm_`` 1.0, ``optimizer.step``, ``zero_grad``, ``loss.item()``.
* in-memory (the speed of light: tokenization that costs nothing): the same model and optimizer on the same
  batches, encoded and collated beforehand (untimed) and cycled.

``--loss`` (one row per loss and family): ``plain``, the caption loss; ``grounded``, the step of ``distill
--set grounding_weight=0.1``: the text model's attention eager (``GROUNDING_ATTENTION``), pairs encoded with
their world targets, ``world_loss`` (attention probabilities returned, the grounding term added);
``dense``, that and ``--set dense_weight=0.1``: hidden states returned and the dense head (a linear layer
in the optimizer) on the visual tokens. The in-memory steps/s of the rows of one run are what each costs.

Both sides run ``_WARMUP`` untimed steps, then the wall time of ``--steps`` steps. ratio = distill /
in-memory steps/s, goal >= 0.90: the per-step tokenization costs less than 10% of a step. encode alone:
seconds per batch of ``encode_pair`` + ``collate`` only (no model), for context: the step's share that
tokenization takes is about encode / (encode + 1 / in-memory steps/s). tokens/sample is the mean unpadded
sequence length (vision tokens included), the number the step's cost grows with. The two sides alternate
order between repeats; best of ``--repeat``. Timings are reported, never asserted; ``spread`` (worst side's
median/best - 1) flags noise, such as another job on the machine.

``distill()`` tokenizes in a worker process beside the step: on a small CPU box the two share the cores
(with a core to spare, ``--threads 1`` on 2 cores, encoding is hidden), on a GPU box encoding runs on the
host while the GPU computes. ``--threads`` pins torch's
intra-op threads (default: torch's own choice).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from common import base_parser, ratio_cell
from rich.console import Console
from rich.table import Table

from dataengine.caption.tiny_vlm import Family, build_tiny_vlm
from trainer.distill import PRESETS, DistillConfig, Pair, world_pairs
from trainer.distill.config import GROUNDING_ATTENTION
from trainer.distill.loop import add_dense_head, batch_plan, make_optimizer
from trainer.distill.losses import digit_weights, weighted_loss, world_loss
from trainer.distill.tokens import collate, encode_pair, encoded_batches, tokenizer_corpus

Row = dict[str, Any]
Batch = dict[str, Any]
Plan = list[list[int]]  # the pair indices of each batch, in order
_WARMUP = 2
_GOAL = 0.90
_CONFIG = DistillConfig(pairs="world")  # the defaults distill() trains with: view, prompt, lr, weights
_LOSSES = {  # as the shipped captioner's stages train
    "plain": {},
    "grounded": {"grounding_weight": 0.1},
    "dense": {"grounding_weight": 0.1, "dense_weight": 0.1},
}


@dataclass
class Student:
    """One family's student as ``distill()`` sets it up, with what a training step needs."""

    family: str
    loss: str  # a key of _LOSSES
    patch: int  # the vision tower's patch side, px
    config: DistillConfig  # distill()'s defaults with the loss's weights
    processor: Any
    model: Any
    optimizer: torch.optim.Optimizer
    weights: torch.Tensor
    dense_head: torch.nn.Linear | None
    pad_id: int

    def step(self, batch: Batch) -> None:
        """One step of ``distill()``'s loop, the lr schedule aside (it does not change the work)."""
        if self.config.world_targets:
            loss = world_loss(self.model, batch, self.weights, self.config, self.dense_head)[0]
        else:
            loss = weighted_loss(self.model, batch, self.weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)  # as distill(): the head unclipped
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()

    def encode(self, pairs: Sequence[Pair], indices: list[int]) -> Batch:
        world = self.config.world_targets
        items = [encode_pair(self.processor, pairs[i], _CONFIG.prompt_id, world) for i in indices]
        return collate(items, self.pad_id)


def _student(
    family: str, preset: str, loss: str, patch: int | None, pairs: Sequence[Pair], work: Path
) -> Student:
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards", "Loading weights": noise around the table

    update = {"seed": _CONFIG.seed, "family": family, "vision_patch_size": patch}
    size = PRESETS[preset].model_copy(update=update)
    corpus = tokenizer_corpus([p.caption for p in pairs])
    folder = work / f"student-{family}-{preset}-{size.patch_size}"
    if not folder.is_dir():
        build_tiny_vlm(folder, size, corpus=corpus)
    processor = AutoProcessor.from_pretrained(folder)
    torch.manual_seed(_CONFIG.seed)
    config = _CONFIG.model_copy(update=_LOSSES[loss])
    attention = GROUNDING_ATTENTION if config.grounding_weight else None
    model = AutoModelForImageTextToText.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=attention
    )
    model.train()
    optimizer = make_optimizer(model, _CONFIG)
    dense_head = add_dense_head(model, optimizer, config)
    weights = digit_weights(processor.tokenizer, _CONFIG.digit_weight)
    pad_id = processor.tokenizer.pad_token_id
    return Student(
        family, loss, size.patch_size, config, processor, model, optimizer, weights, dense_head, pad_id
    )


def _steps(student: Student, batches: Iterator[Batch], steps: int) -> float:
    """Seconds for ``steps`` training steps after ``_WARMUP`` untimed ones."""
    for _ in range(_WARMUP):
        student.step(next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        student.step(next(batches))
    return time.perf_counter() - start


def _distilling(student: Student, pairs: Sequence[Pair], plan: Plan) -> Iterator[Batch]:
    world = student.config.world_targets
    return encoded_batches(student.processor, pairs, plan, _CONFIG.prompt_id, world_targets=world)


def _encode_alone(student: Student, pairs: Sequence[Pair], plan: Plan) -> tuple[list[Batch], float]:
    """Every batch of ``plan`` encoded and collated; the seconds the ones after the warm-up took."""
    batches, timed = [], 0.0
    for k, indices in enumerate(plan):
        start = time.perf_counter()
        batches.append(student.encode(pairs, indices))
        if k >= _WARMUP:
            timed += time.perf_counter() - start
    return batches, timed


def _spread(walls: dict[str, list[float]]) -> float:
    return max(statistics.median(v) / min(v) - 1 for v in walls.values())


def _row(student: Student, pairs: Sequence[Pair], args: Any) -> Row:
    plan = list(itertools.islice(batch_plan(len(pairs), args.batch_size, _CONFIG.seed), _WARMUP + args.steps))
    walls: dict[str, list[float]] = {"distill": [], "memory": []}
    encode: list[float] = []
    cached: list[Batch] = []
    for r in range(args.repeat):
        batches, wall = _encode_alone(student, pairs, plan)
        cached = cached or batches
        encode.append(wall)
        for side in ("distill", "memory") if r % 2 == 0 else ("memory", "distill"):
            source = _distilling(student, pairs, plan) if side == "distill" else itertools.cycle(cached)
            walls[side].append(_steps(student, source, args.steps))
    rate = {k: args.steps / min(v) for k, v in walls.items()}
    tokens = [int(n) for b in cached for n in b["attention_mask"].sum(dim=1)]
    return {
        "family": student.family, "loss": student.loss, "patch": student.patch,
        "preset": args.preset, "batch": args.batch_size,
        "tokens_per_sample": float(np.mean(tokens)), "encode_s_per_batch": min(encode) / args.steps,
        "memory_steps_s": rate["memory"], "distill_steps_s": rate["distill"],
        "memory_samples_s": rate["memory"] * args.batch_size,
        "distill_samples_s": rate["distill"] * args.batch_size,
        "ratio": rate["distill"] / rate["memory"], "spread": _spread(walls),
        "walls": walls, "encode_walls": encode,
    }  # fmt: skip


_COLUMNS = (
    "family", "loss", "patch", "preset", "batch", "tokens", "encode s/batch", "in-memory steps/s",
    "distill steps/s", "in-memory samples/s", "distill samples/s", "ratio", "spread",
)  # fmt: skip


def _table(rows: list[Row], args: Any, setup_s: float) -> Table:
    view = _CONFIG.view
    caption = (
        f"{args.pairs} world pairs ({view.fps:g} fps, <= {view.max_frames} frames, short side {view.size}; "
        f"made in {setup_s:.0f} s, untimed); {args.steps} steps after {_WARMUP} warm-up, best of "
        f"{args.repeat}; {torch.get_num_threads()} torch threads, {os.cpu_count()} cores. ratio = distill / "
        f"in-memory steps/s, goal >= {_GOAL}; tokens: mean per sample, unpadded; encode s/batch: "
        "encode_pair + collate alone; loss: plain (caption), grounded (+ grounding 0.1), dense (+ dense 0.1)."
    )
    table = Table(title="distill: student steps tokenizing each batch vs in-memory batches", caption=caption)
    for col in _COLUMNS:
        table.add_column(col, justify="left" if col == "family" else "right")
    for r in rows:
        table.add_row(
            r["family"], r["loss"], str(r["patch"]), r["preset"], str(r["batch"]),
            f"{r['tokens_per_sample']:.0f}", f"{r['encode_s_per_batch']:.3f}", f"{r['memory_steps_s']:.2f}",
            f"{r['distill_steps_s']:.2f}",
            f"{r['memory_samples_s']:.1f}", f"{r['distill_samples_s']:.1f}", ratio_cell(r["ratio"], _GOAL),
            f"{r['spread']:.0%}",
        )  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.set_defaults(repeat=None)  # 3; quick: 1
    families = list(get_args(Family))
    parser.add_argument(
        "--family", nargs="+", choices=families, default=["qwen3_vl"], help="student family, one row each"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="student size")
    parser.add_argument(
        "--loss",
        nargs="+",
        choices=list(_LOSSES),
        default=["plain"],
        help="the step's loss, one row each: plain (caption), grounded (grounding_weight=0.1), dense "
        "(grounding_weight=0.1, dense_weight=0.1)",
    )
    parser.add_argument(
        "--patch-size",
        nargs="+",
        type=int,
        default=[None],
        help="the vision tower's patch side in px, one row each (distill --set patch_size; default: the "
        "family's, 16 for qwen3_vl)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step (distill's default: 8)")
    parser.add_argument("--steps", type=int, help="timed steps per measurement (10; quick: 4)")
    parser.add_argument("--pairs", type=int, help="world pairs to draw batches from (64; quick: 16)")
    parser.add_argument("--threads", type=int, help="torch threads (torch's default)")
    parser.add_argument("--quick", action="store_true", help="16 pairs, 4 steps, best of 1")
    args = parser.parse_args(argv)
    quick = {"repeat": (1, 3), "steps": (4, 10), "pairs": (16, 64)}
    for name, (small, full) in quick.items():
        if getattr(args, name) is None:
            setattr(args, name, small if args.quick else full)
    threads = 1 if args.threads is None else args.threads
    if min(args.repeat, args.steps, args.pairs, args.batch_size, threads) < 1:
        parser.error("--repeat, --steps, --pairs, --batch-size and --threads must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    console, rows = Console(width=132), []
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        pairs = world_pairs(args.pairs, _CONFIG.seed, _CONFIG.view, work, workers=1)
        setup_s = time.perf_counter() - start
        for family in dict.fromkeys(args.family):  # once each, in the order given
            for patch in dict.fromkeys(args.patch_size):
                for loss in dict.fromkeys(args.loss):  # each starts from the same fresh student
                    student = _student(family, args.preset, loss, patch, pairs, work)
                    rows.append(_row(student, pairs, args))
                    del student
    console.print(_table(rows, args, setup_s))
    if args.json:
        report = {"repeat": args.repeat, "steps": args.steps, "pairs": args.pairs, "setup_s": setup_s}
        print(json.dumps({**report, "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
