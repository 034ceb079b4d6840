"""Shape learning: how fast a student's vision tower learns to see an object's shape, beside a small CNN
on the same frames and labels (the reference: what the task costs a network built for pictures).

    .venv/bin/python bench/tower_shape.py                             # patch 16 and 8, fresh towers, ~12 min
    .venv/bin/python bench/tower_shape.py --patch-size 16 --steps 200 --threads 2                  # ~3 min
    .venv/bin/python bench/tower_shape.py --init dataengine/assets/world-captioner --patch-size 16  # shipped
    .venv/bin/python bench/tower_shape.py --patch-size 8 --merge-size 4    # 8-px patches merged 4 x 4

Data (the same for every row): still world frames, one per shot of ``random_spec`` (1-3 objects, every
background and pattern) rendered at t = 0 (``render_shot``, 320 x 240, no video codec), resized to the
distill caption view (short side 112, bicubic), each frame twice as one temporal patch. The label of an
object is its shape; its token is the merged visual token (the tokens the text model reads) whose cell
holds the object's centre. ``--eval-clips`` frames from another seed are held out.

* tower: the qwen3_vl ``tiny`` preset's vision tower (``build_tiny_vlm``, or ``--init``'s), its position
  table as ``distill`` starts a new student (``sincos_positions``) and frozen (``freeze_positions``), fed by
  the student's own video processor; a linear head reads shape from the merged token. AdamW, lr ``--lr``.
* cnn: four 3x3 conv + ReLU + 2x2 max-pool blocks (32, 64, 64, 128 channels, 0.13 M parameters) on the
  view's pixels; a 1x1 conv reads shape at the 16-px cell of the object's centre. Same batches, same lr.

Every ``--eval-every`` steps: held-out accuracy (chance 1/3). ratio = tower / cnn held-out accuracy at the
end, goal >= 0.90: the tower sees shapes as well as a small CNN after the same steps. ``train s``: the
seconds of the training steps (a tower's include its video processor; drawing the frames is not counted),
reported beside, never asserted.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import base_parser, ratio_cell
from PIL import Image
from rich.console import Console
from rich.table import Table

from dataengine.caption.engines.base import video_metadata
from dataengine.caption.tiny_vlm import build_tiny_vlm
from dataengine.world.generate import random_spec
from dataengine.world.language import SHAPES
from dataengine.world.render import render_shot
from trainer.distill import PRESETS
from trainer.distill.loop import sincos_positions

Labels = list[tuple[int, float, float, int]]  # (frame, centre x, centre y as fractions of the frame, shape)
Learner = Callable[[np.ndarray, Labels], tuple[torch.Tensor, torch.Tensor]]  # frames -> (logits, shapes)
_VIEW_W, _VIEW_H = 150, 112  # the distill caption view of a 320 x 240 world clip
_GOAL = 0.90


def world_frames(rng: np.random.Generator, n: int) -> tuple[np.ndarray, Labels]:
    """``n`` still world frames at the caption view's size (N, H, W, 3) and their objects' labels."""
    frames, labels = [], []
    for i in range(n):
        spec = random_spec(rng, max_shots=1)
        shot, width, height = spec.shots[0], spec.width, spec.height
        full = Image.fromarray(render_shot(shot, 0.0, width, height))
        frames.append(np.asarray(full.resize((_VIEW_W, _VIEW_H), Image.Resampling.BICUBIC)))
        labels += [
            (i, o.start_xy[0] / width, o.start_xy[1] / height, SHAPES.index(o.shape)) for o in shot.objects
        ]
    return np.stack(frames), labels


def _at_cells(features_NHWC: torch.Tensor, labels: Labels) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature of the cell holding each object's centre, and the objects' shapes."""
    _, rows, cols, _ = features_NHWC.shape
    index = [(i, int(y * rows), int(x * cols)) for i, x, y, _ in labels]
    picked = features_NHWC[[i for i, _, _ in index], [r for _, r, _ in index], [c for _, _, c in index]]
    return picked, torch.tensor([s for *_, s in labels])


def tower_learner(student: Path, fresh: bool, params: list[Any]) -> Learner:
    """The student's vision tower with a linear shape head; its position table frozen, and, when ``fresh``
    (a new student), first set as ``distill`` sets a new student's."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights": noise around the table
    processor = AutoProcessor.from_pretrained(student).video_processor
    tower = AutoModelForImageTextToText.from_pretrained(student, dtype=torch.float32)
    head = torch.nn.Linear(tower.config.text_config.hidden_size, len(SHAPES))

    def pixels(frames_NHWC: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [np.stack([f, f]) for f in frames_NHWC]  # each still frame as one temporal patch
        meta = [{k: v for k, v in video_metadata(p, 2.0).items() if k != "do_sample_frames"} for p in pairs]
        out = processor(videos=pairs, video_metadata=meta, do_sample_frames=False, return_tensors="pt")
        return out["pixel_values_videos"], out["video_grid_thw"]

    visual = tower.model.visual
    if fresh:
        example, _ = pixels(world_frames(np.random.default_rng(0), 1)[0])
        sincos_positions(tower, {"pixel_values_videos": example})
    visual.pos_embed.weight.requires_grad_(False)
    params += [p for p in visual.parameters() if p.requires_grad] + list(head.parameters())
    merge = processor.merge_size

    def learner(frames_NHWC: np.ndarray, labels: Labels) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_values, grid = pixels(frames_NHWC)
        merged = visual(pixel_values, grid_thw=grid).pooler_output
        _, rows, cols = (int(v) for v in grid[0])
        picked, shapes = _at_cells(merged.reshape(len(frames_NHWC), rows // merge, cols // merge, -1), labels)
        return head(picked), shapes

    return learner


def cnn_learner(params: list[Any]) -> Learner:
    """Four conv blocks to 16-px cells and a 1x1 conv shape head."""
    layers: list[torch.nn.Module] = []
    for c_in, c_out in ((3, 32), (32, 64), (64, 64), (64, 128)):
        layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    net = torch.nn.Sequential(*layers, torch.nn.Conv2d(128, len(SHAPES), 1))
    params += list(net.parameters())

    def learner(frames_NHWC: np.ndarray, labels: Labels) -> tuple[torch.Tensor, torch.Tensor]:
        x_NCHW = torch.from_numpy(frames_NHWC).float().permute(0, 3, 1, 2) / 127.5 - 1
        return _at_cells(net(x_NCHW).permute(0, 2, 3, 1), labels)

    return learner


def _accuracy(learner: Learner, held_out: tuple[np.ndarray, Labels]) -> float:
    frames, labels = held_out
    right = 0
    with torch.no_grad():
        for start in range(0, len(frames), 50):
            batch = [(i - start, x, y, s) for i, x, y, s in labels if start <= i < start + 50]
            logits, shapes = learner(frames[start : start + 50], batch)
            right += int((logits.argmax(1) == shapes).sum())
    return right / len(labels)


def _train(name: str, make: Callable[[list[Any]], Learner], args: Any, held_out: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    params: list[Any] = []
    learner = make(params)
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    rng = np.random.default_rng(1)  # the same batches for every row
    curve, seconds = [(0, _accuracy(learner, held_out))], 0.0
    for step in range(1, args.steps + 1):
        frames, labels = world_frames(rng, args.batch_size)
        start = time.perf_counter()
        logits, shapes = learner(frames, labels)
        loss = torch.nn.functional.cross_entropy(logits, shapes)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, _accuracy(learner, held_out)))
    return {"learner": name, "curve": curve, "accuracy": curve[-1][1], "train_s": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, default_repeat=1)
    parser.add_argument("--patch-size", nargs="+", type=int, default=[16, 8], help="tower rows, px per patch")
    parser.add_argument("--merge-size", type=int, default=2, help="patches per side of a merged token")
    parser.add_argument("--init", help="start the tower from this student folder (its own patch size)")
    parser.add_argument("--steps", type=int, default=400, help="training steps per learner")
    parser.add_argument("--batch-size", type=int, default=32, help="frames per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-clips", type=int, default=300, help="held-out frames")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    held_out = world_frames(np.random.default_rng(123), args.eval_clips)
    rows = [_train("cnn", cnn_learner, args, held_out)]
    with tempfile.TemporaryDirectory(prefix="bench-tower-") as tmp:
        students = {"init": Path(args.init)} if args.init else {}
        for patch in [] if args.init else args.patch_size:
            size = PRESETS["tiny"].model_copy(
                update={
                    "family": "qwen3_vl",
                    "vision_patch_size": patch,
                    "vision_merge_size": args.merge_size,
                }
            )
            students[f"patch {patch}, merge {args.merge_size}"] = build_tiny_vlm(
                Path(tmp) / f"student-{patch}", size
            )
        for name, folder in students.items():
            learner = partial(tower_learner, folder, not args.init)
            rows.append(_train(f"tower, {name}", learner, args, held_out))
    cnn = rows[0]["accuracy"]
    for row in rows:
        row["ratio"] = row["accuracy"] / cnn
    table = Table(
        title="tower_shape: held-out shape accuracy of a vision tower trained alone vs a small CNN",
        caption=f"{args.steps} steps of {args.batch_size} still world frames, lr {args.lr:g}, "
        f"{args.eval_clips} held-out frames (chance 0.33), {args.threads} torch threads. ratio = accuracy / "
        f"the CNN's, goal >= {_GOAL}.",
    )
    steps = [s for s, _ in rows[0]["curve"]]
    for col in ["learner", *(f"step {s}" for s in steps), "train s", "ratio"]:
        table.add_column(col, justify="left" if col == "learner" else "right")
    for row in rows:
        accs = [f"{a:.2f}" for _, a in row["curve"]]
        table.add_row(row["learner"], *accs, f"{row['train_s']:.0f}", ratio_cell(row["ratio"], _GOAL))
    Console(width=132).print(table)
    if args.json:
        print(json.dumps({"steps": args.steps, "batch": args.batch_size, "lr": args.lr, "rows": rows}))


if __name__ == "__main__":
    main()
