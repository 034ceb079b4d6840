"""The world's targets: which visual tokens each described subject's words look at (grounding), what each
visual token shows (dense), and the heading bins."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dataengine.caption.schema import StructuredCaption
from dataengine.world.language import (
    CAMERAS,
    MOTIONS,
    OCTANTS,
    PATTERNS,
    SHAPES,
    SIZE_EDGES,
    SIZES,
    motion_of,
    read_caption,
    region_of,
)
from trainer.distill.targets import (
    DENSE_CLASSES,
    DENSE_READINGS,
    HEADING_BINS,
    PLACE_BINS,
    heading_bin,
    split_dense_targets,
)
from trainer.distill.tokens import encode_pair


@pytest.mark.slow
def test_grounding_targets_are_each_subjects_tokens_where_it_starts_and_ends(
    student: tuple[Path, list],
) -> None:
    """Every answer token inside a subject's JSON object is a query, and its targets are the cells the
    subject's box touches in the first frame pair (the cell of the start centre its caption names among them)
    and in the last (the cell of its centre in the last frame among them)."""
    from transformers import AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    for pair in pairs:
        item = encode_pair(processor, pair, "dense-v1", world_targets=True)
        queries, targets = item["grounding"]
        _, h, w = (int(v) // s for v, s in zip(item["video_grid_thw"][0], (1, 2, 2), strict=True))
        assert targets.shape == (len(queries), 2, h * w)
        subjects = StructuredCaption.model_validate_json(pair.caption).subjects
        for subject, target in ((subjects[0], targets[0]), (subjects[-1], targets[-1])):
            x, y = (float(v) for v in subject.position.split("(")[1].rstrip(")").split(","))
            assert target[0, int(y / 240 * h) * w + int(x / 320 * w)], subject.position
            assert region_of(x, y, 320, 240) == subject.position.split(",")[0]
        x0, y0, x1, y1 = pair.boxes[-1, -1]  # the last subject in the last frame, as fractions of the frame
        assert targets[-1, 1, int((y0 + y1) / 2 * h) * w + int((x0 + x1) / 2 * w)]
        described = processor.tokenizer.decode(item["input_ids"][queries + 1])
        subjects_json = ",".join(s.model_dump_json() for s in subjects)
        assert subjects_json[2:-1] in described and described in pair.caption  # whole tokens at the edges
        assert '"summary"' not in described and '"events"' not in described
    assert not {"grounding", "dense"} & set(encode_pair(processor, pairs[0], "dense-v1"))  # only when asked


@pytest.mark.slow
def test_dense_targets_say_what_each_visual_token_shows(student: tuple[Path, list]) -> None:
    """One row per visual token: the token under each subject's start centre (first frame pair) reads
    that subject's shape x size word and motion as its caption states them, and is the one token of that
    pair that reads its shape x size in the centre column, its size in hundredths (within its size word's)
    and its centre's place in 48ths of the frame (within the token's cell); its heading lies in its motion
    word's sector; a token no object touches reads nothing there and the scene's pattern x camera; every
    token reads its own grid row and column."""
    import torch
    from transformers import AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    video = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    seen_scene = checked = 0
    for pair in pairs:
        item = encode_pair(processor, pair, "dense-v1", world_targets=True)
        dense = item["dense"]
        _, h, w = (int(v) // s for v, s in zip(item["video_grid_thw"][0], (1, 2, 2), strict=True))
        assert dense.shape == (int((item["input_ids"] == video).sum()), len(DENSE_READINGS))
        for k, n in enumerate(DENSE_CLASSES):
            assert ((dense[:, k] == -100) | ((dense[:, k] >= 0) & (dense[:, k] < n))).all()
        read = dict(zip(DENSE_READINGS, dense.T, strict=True))  # each reading's column
        frame_pairs = len(dense) // (h * w)
        rows, cols = np.indices((h, w))
        assert torch.equal(read["row"], torch.from_numpy(np.tile(rows.ravel(), frame_pairs)))  # raster order
        assert torch.equal(read["column"], torch.from_numpy(np.tile(cols.ravel(), frame_pairs)))
        (shot,) = read_caption(StructuredCaption.model_validate_json(pair.caption))
        for i, (obj, box) in enumerate(zip(shot.objects, pair.boxes, strict=True)):
            x0, y0, x1, y1 = box[:2].mean(axis=0)  # over the first frame pair
            row, col = int((y0 + y1) / 2 * h), int((x0 + x1) / 2 * w)
            cell = np.array([col / w, row / h, (col + 1) / w, (row + 1) / h])
            if any(_touches(other[:2].mean(axis=0), cell) for j, other in enumerate(pair.boxes) if j != i):
                continue  # another subject may cover more of this token
            token = {name: int(v[row * w + col]) for name, v in read.items()}
            assert token["object"] == 1 + SHAPES.index(obj.shape) * len(SIZES) + SIZES.index(obj.size)
            assert token["motion"] == MOTIONS.index(obj.motion)
            assert token["scene"] == -100
            assert token["centre"] == token["object"] - 1  # the token holds its centre
            if obj.motion == "still":
                assert token["heading"] == -100
            else:
                assert OCTANTS[token["heading"] // 4] == obj.motion  # the heading lies in the word's sector
            assert SIZES[int(np.searchsorted(np.array(SIZE_EDGES) * 100, token["extent"] + 0.5))] == obj.size
            x, y = token["x"], token["y"]  # the centre's 48ths of the frame lie in the token's cell
            assert x / PLACE_BINS < (col + 1) / w and col / w < (x + 1) / PLACE_BINS
            assert y / PLACE_BINS < (row + 1) / h and row / h < (y + 1) / PLACE_BINS
            readings = {k: int(v[row * w + col]) for k, v in split_dense_targets(dense.numpy()).items()}
            assert readings == {
                "shape": SHAPES.index(obj.shape), "size": SIZES.index(obj.size),
                "motion": MOTIONS.index(obj.motion), "pattern": -1, "camera": -1,
            }  # fmt: skip
            checked += 1
        empty = (read["object"] == 0).nonzero()[:, 0]
        scene = PATTERNS.index(shot.pattern) * len(CAMERAS) + CAMERAS.index(shot.camera)
        assert (read["scene"][empty] == scene).all() and (read["motion"][empty] == -100).all()
        centres = (read["centre"] != -100).reshape(-1, h * w).sum(1)  # per frame pair: one per object at most
        assert centres[0] >= 1 and (centres <= len(shot.objects)).all()
        seen_scene += len(empty)
    assert seen_scene > 0 and checked >= len(pairs)


def test_heading_bins_split_each_direction_word_in_four() -> None:
    """Sweeping the direction round the circle (y down on screen), the heading bin climbs by one every
    11.25 degrees, counterclockwise, and its quarter is always the direction word's sector; a velocity
    too slow to move has no heading."""
    bins = []
    for degrees in np.arange(0.25, 360.0, 0.5):  # clear of the sectors' edges, at 22.5 + 45k
        vx, vy = 40 * math.cos(math.radians(degrees)), -40 * math.sin(math.radians(degrees))
        bins.append(heading_bin(vx, vy))
        assert OCTANTS[bins[-1] // 4] == motion_of(vx, vy)
    assert sorted(set(bins)) == list(range(HEADING_BINS))
    assert (bins[0], bins[44], bins[45]) == (2, 3, 4)  # 0.25 degrees; either side of 22.5, an edge
    assert heading_bin(1.0, -1.0) == -100


def _touches(box: np.ndarray, cell: np.ndarray) -> bool:
    return bool(box[0] < cell[2] and cell[0] < box[2] and box[1] < cell[3] and cell[1] < box[3])
