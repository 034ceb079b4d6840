"""What a distilled student sees and says, measured inside the model (``dataengine probe-student``).

Two teacher-forced probes on held-out world clips (the ground-truth caption is fed in; nothing is generated),
for finding out *why* a student misses an attribute rather than only *that* it does:

* **attribute accuracy**: the student's next-token guess at the first token of each attribute's value in the
  caption (the shape word, the colour word, the start region, the motion direction, ...), by how many objects
  the clip has. A guess at chance means the student does not know the fact, whatever it writes after it.
* **token positions**: whether the visual tokens carry their own place in the frame. A ridge classifier from
  each token of the first frame pair to its grid row and to its grid column, fitted on three quarters of the
  tokens and scored on the rest, at the vision tower's input (patch embedding + position table, the 2 x 2
  window averaged) and at its output (the merged tokens the text model reads). At chance at the output, no
  amount of text-model training can name where an object starts.

And one probe of what the tokens show: **token contents**, a ridge classifier from each merged visual token
(every frame pair) to what the world knows is on it (``distill.dense_targets``): the shape, size word and
motion of the object covering it, or the scene's pattern and camera movement where no object is; fitted on
the tokens of three quarters of the clips, scored on the others' (tokens of one clip never on both sides).
A reading near its majority baseline is one the vision tower does not yet deliver to the text model.
"""

from __future__ import annotations

import re
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.distill.config import DistillConfig
from trainer.distill.pairs import world_pairs
from trainer.distill.targets import split_dense_targets
from trainer.distill.tokens import answer_offsets, collate, encode_pair

PROBE_SEED = 777_000  # held out: distill draws from seed + WORLD_SEED_OFFSET, eval-captions from EVAL_SEED

# Where each attribute's value starts in a world caption's JSON (``world.shot_caption``): group 1 begins at
# the token the probe scores.
ATTRIBUTE_PATTERNS = {
    "count": r'"summary":"(\w+)',
    "background": r"over an? (?:plain )?(\w+) background",
    "camera": r'"description":"the camera (?:moves \()?(\w+)',
    "shape": r'"kind":"(\w+)',
    "colour": r'"appearance":"(\w+)',
    "size": r'"appearance":"\w+, (\w+)',
    "position": r'"position":"(\w+)',
    "motion": r'"motion":"(?:moves )?(\w+)',  # the direction, or "stays"
}


@dataclass
class ProbeResult:
    model: str
    clips: int
    # attribute -> {"1": accuracy on one-object clips, "2": ..., "all": ...}
    attributes: dict[str, dict[str, float]] = field(default_factory=dict)
    # "input" / "output" -> {"row": accuracy, "col": accuracy, "row_chance": ..., "col_chance": ...}
    positions: dict[str, dict[str, float]] = field(default_factory=dict)
    # reading (shape, size, motion, pattern, camera) -> {"accuracy": ..., "majority": ..., "tokens": ...}
    contents: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def probe_student(
    model_dir: str | Path, n: int = 48, seed: int = PROBE_SEED, threads: int | None = None
) -> ProbeResult:
    """The three probes on ``n`` held-out single-shot world clips through the distill caption view."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if threads:
        torch.set_num_threads(threads)
    view = DistillConfig(pairs="world").view
    with tempfile.TemporaryDirectory() as tmp:
        pairs = world_pairs(n, seed, view, Path(tmp))
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    hits: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    tokens: dict[str, list[np.ndarray]] = defaultdict(list)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    merged: list[np.ndarray] = []
    dense: list[np.ndarray] = []
    for pair in pairs:
        item = encode_pair(processor, pair, "dense-v1", world_targets=True)
        dense.append(item.pop("dense").numpy())
        item.pop("grounding", None)
        with torch.no_grad():
            logits = model(**collate([item], processor.tokenizer.pad_token_id)).logits[0]
            layers, all_merged = _visual_tokens(model, item)
        merged.append(all_merged)
        objects = str(pair.caption.count('"kind"'))
        for name, position in value_starts(processor.tokenizer, item, pair.caption):
            guess = int(logits[position - 1].argmax())
            hits[name][objects].append(guess == int(item["input_ids"][position]))
        for where, grid in layers.items():
            tokens[where].append(grid.reshape(-1, grid.shape[-1]))
        r, c = np.indices(next(iter(layers.values())).shape[:2])
        rows.append(r.ravel())
        cols.append(c.ravel())
    result = ProbeResult(model=str(model_dir), clips=len(pairs))
    for name, by_count in hits.items():
        scores = {k: round(float(np.mean(v)), 3) for k, v in sorted(by_count.items())}
        scores["all"] = round(float(np.mean([h for v in by_count.values() for h in v])), 3)
        result.attributes[name] = scores
    row, col = np.concatenate(rows), np.concatenate(cols)
    for where, chunks in tokens.items():
        x = np.concatenate(chunks)
        result.positions[where] = {
            "row": ridge_accuracy(x, row),
            "col": ridge_accuracy(x, col),
            "row_chance": round(1 / (row.max() + 1), 3),
            "col_chance": round(1 / (col.max() + 1), 3),
        }
    clip = np.concatenate([np.full(len(x), i) for i, x in enumerate(merged)])
    x, targets = np.concatenate(merged), np.concatenate(dense)
    for reading, y in split_dense_targets(targets).items():
        read = y >= 0
        if len(np.unique(clip[read])) < 2:
            continue  # too few clips show it to hold some out
        accuracy, majority = grouped_probe(x[read], y[read], clip[read])
        result.contents[reading] = {"accuracy": accuracy, "majority": majority, "tokens": int(read.sum())}
    return result


def value_starts(tokenizer: Any, item: dict[str, Any], caption: str) -> list[tuple[str, int]]:
    """(attribute, index in ``item``'s input ids) of the first token of each attribute value in the answer."""
    start = int((item["labels"] != -100).nonzero()[0, 0])
    offsets = answer_offsets(tokenizer, item["input_ids"], start, caption)
    found = []
    for name, pattern in ATTRIBUTE_PATTERNS.items():
        for match in re.finditer(pattern, caption):
            char = match.start(1)
            index = next(i for i, (a, b) in enumerate(offsets) if a <= char < b)
            found.append((name, start + index))
    return found


def _visual_tokens(model: Any, item: dict[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The first frame pair's tokens on their (rows, cols) grid: at the vision tower's input (patch embedding
    plus, where the family has one, the position table; each 2 x 2 window averaged) and at its output; and
    the output tokens of every frame pair, (tokens, width) in the order the text model reads them."""
    visual = model.model.visual
    pixels, grid_thw = item["pixel_values_videos"], item["video_grid_thw"]
    _, h, w = (int(v) for v in grid_thw[0])
    merge = visual.spatial_merge_size
    hh, ww = h // merge, w // merge
    first = hh * ww * merge * merge  # patches of the first frame pair, in merge-window order
    out = visual(pixels, grid_thw=grid_thw)
    merged = getattr(out, "pooler_output", None)
    merged = out if merged is None else merged  # Qwen2.5-VL's tower returns the merged tokens directly
    patches = visual.patch_embed(pixels)
    table = getattr(visual, "pos_embed", None)
    if table is not None:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import (
            get_vision_interpolation_indices_and_weights,
        )

        indices, weights = get_vision_interpolation_indices_and_weights(
            grid_thw, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners, spatial_merge_size=merge, kwargs={},
        )  # fmt: skip
        patches = patches + (table(indices) * weights[:, :, None]).sum(1)
    tower_in = patches[:first].reshape(hh, ww, merge * merge, -1).mean(2)
    grids = {
        "input": tower_in.float().numpy(),
        "output": merged[: hh * ww].reshape(hh, ww, -1).float().numpy(),
    }
    return grids, merged.float().numpy()


def ridge_accuracy(x: np.ndarray, y: np.ndarray, penalty: float = 0.1) -> float:
    """Held-out accuracy of a one-vs-rest ridge classifier (features standardized), 3/4 fit, 1/4 scored."""
    order = np.random.default_rng(0).permutation(len(x))
    fit, held = order[: len(x) * 3 // 4], order[len(x) * 3 // 4 :]
    return round(float(np.mean(_ridge_predict(x, y, fit, held, penalty) == y[held])), 3)


def grouped_probe(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, penalty: float = 0.1
) -> tuple[float, float]:
    """``ridge_accuracy`` with each group (a clip's tokens) wholly on one side, 3/4 of the groups fit: the
    held-out accuracy, and that of always guessing the fit rows' commonest class."""
    names = np.random.default_rng(0).permutation(np.unique(groups))
    fitted = np.isin(groups, names[: max(1, len(names) * 3 // 4)])
    fit, held = np.flatnonzero(fitted), np.flatnonzero(~fitted)
    accuracy = float(np.mean(_ridge_predict(x, y, fit, held, penalty) == y[held]))
    majority = float(np.mean(y[held] == np.bincount(y[fit]).argmax()))
    return round(accuracy, 3), round(majority, 3)


def _ridge_predict(
    x: np.ndarray, y: np.ndarray, fit: np.ndarray, held: np.ndarray, penalty: float
) -> np.ndarray:
    """A one-vs-rest ridge classifier fitted on rows ``fit`` (features standardized on them); its classes
    for rows ``held``."""
    mean, std = x[fit].mean(0), x[fit].std(0) + 1e-6
    features = np.c_[(x - mean) / std, np.ones(len(x))]
    targets = np.eye(int(y.max()) + 1)[y]
    a = features[fit]
    coef = np.linalg.solve(a.T @ a + penalty * np.eye(a.shape[1]), a.T @ targets[fit])
    return (features[held] @ coef).argmax(1)
