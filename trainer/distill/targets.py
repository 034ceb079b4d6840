"""What the world knows of a shot's clip, as the class ids and masks the auxiliary losses read."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataengine.config import ConfigError
from dataengine.world.language import (
    CAMERAS,
    MOTIONS,
    PATTERNS,
    SHAPES,
    SIZES,
    camera_movement,
    motion_of,
    size_word,
)
from dataengine.world.spec import ShotSpec


@dataclass(frozen=True)
class WorldClasses:
    """What a world shot's subjects and scene are: the class ids the dense loss reads from visual tokens."""

    # (subjects, 4) in caption order: shape x size word (SHAPES x SIZES), motion, heading (-100 if still),
    # extent (EXTENT_BINS)
    subjects: np.ndarray
    scene: int  # pattern x camera movement (PATTERNS x CAMERAS)


# the dense head's readings: what is on a token (nothing, or shape x size), its motion, the scene, on the
# token holding an object's centre, that object's shape x size, the token's own grid row and column, and
# three finer than the caption's words, so that the tokens tell neighbouring words apart near their edges:
# a moving object's heading, and on its centre token, its size and where in the frame its centre lies
DENSE_READINGS = ("object", "motion", "scene", "centre", "row", "column", "heading", "extent", "x", "y")
DENSE_LOGGED = (*DENSE_READINGS, "shape")  # shape: the centre reading's shape, right whatever the size
GRID_CLASSES = 32  # the most merged-token rows (or columns) a frame may have for the row and column readings
HEADING_BINS = 32  # 11.25-degree bins, four to each of the eight direction words' sectors
EXTENT_BINS = 32  # size / min(width, height) in hundredths (the size words' edges are 0.17 and 0.23), capped
PLACE_BINS = 48  # the centre's x (y) in 48ths of the frame, sixteen to each third (the start regions')
DENSE_CLASSES = (
    1 + len(SHAPES) * len(SIZES), len(MOTIONS), len(PATTERNS) * len(CAMERAS), len(SHAPES) * len(SIZES),
    GRID_CLASSES, GRID_CLASSES, HEADING_BINS, EXTENT_BINS, PLACE_BINS, PLACE_BINS,
)  # fmt: skip


def heading_bin(vx: float, vy: float) -> int:
    """The ``HEADING_BINS`` bin of an on-screen velocity's direction (y down), or -100 where ``motion_of``
    says still. The bins split each of ``motion_of``'s 45-degree sectors in four, counterclockwise from the
    start of the "right" sector, so a bin's sector is ``OCTANTS[bin // 4]``:
    the reading asks the tokens where in its sector a direction lies, which is what tells neighbouring
    words apart near a sector's edge."""
    if motion_of(vx, vy) == "still":
        return -100
    turns = (math.atan2(-vy, vx) / (2 * math.pi) + 1 / 16) % 1.0
    return int(turns * HEADING_BINS) % HEADING_BINS


def extent_bin(size_px: float, width: int, height: int) -> int:
    """An object's size in hundredths of the frame's shorter side, capped at ``EXTENT_BINS`` - 1: the size
    words (``size_word``) change at whole hundredths, so each word is a run of bins."""
    return min(EXTENT_BINS - 1, int(size_px / min(width, height) * 100 + 1e-9))


def world_classes(shot: ShotSpec, width: int, height: int) -> WorldClasses:
    subjects = []
    for obj in shot.objects:
        on_screen = (obj.velocity_xy[0] - shot.pan_xy[0], obj.velocity_xy[1] - shot.pan_xy[1])
        subjects.append((
            SHAPES.index(obj.shape) * len(SIZES) + SIZES.index(size_word(obj.size_px, width, height)),
            MOTIONS.index(motion_of(*on_screen)),
            heading_bin(*on_screen),
            extent_bin(obj.size_px, width, height),
        ))  # fmt: skip
    camera = CAMERAS.index(camera_movement(*shot.pan_xy))
    return WorldClasses(
        np.array(subjects, dtype=np.int64), PATTERNS.index(shot.pattern) * len(CAMERAS) + camera
    )


def grounding_targets(
    caption: str,
    offsets: Sequence[tuple[int, int]],
    answer_start: int,
    boxes: np.ndarray,
    grid_thw: Any,
    merge: int,
) -> tuple[Any, Any]:
    """Where the answer describes each subject, and which visual tokens of the first and of the last frame
    pair show it (where it starts and where it ends).

    Returns ``(queries, targets)``: the sequence positions whose next token lies in a subject's JSON object
    (Q,), and for each two masks (Q, 2, rows x cols) over the merged tokens of the first and of the last
    frame pair, row-major, true where the subject's box in either frame of the pair overlaps the token's cell.
    """
    import torch

    starts = [m.start() for m in re.finditer(r'\{"kind":', caption)]
    if len(starts) != len(boxes):
        raise RuntimeError(f"the caption names {len(starts)} subjects and the world {len(boxes)}")
    ends = [*starts[1:], caption.index("}]", starts[-1]) + 1]
    frame_pairs, rows, cols = (int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge)
    r, c = np.indices((rows, cols))

    def cells(frame_boxes: np.ndarray) -> np.ndarray:
        mask = np.zeros((rows, cols), dtype=bool)
        for x0, y0, x1, y1 in frame_boxes:
            mask |= (x0 < (c + 1) / cols) & (x1 > c / cols) & (y0 < (r + 1) / rows) & (y1 > r / rows)
        return mask.ravel()

    last = 2 * (frame_pairs - 1)  # an odd last frame is repeated in its pair: its box alone
    queries, targets = [], []
    for subject, (a, b) in enumerate(zip(starts, ends, strict=True)):
        both = np.stack([cells(boxes[subject, :2]), cells(boxes[subject, last : last + 2])])
        for j, (char, _) in enumerate(offsets):
            if a <= char < b:
                queries.append(answer_start + j - 1)
                targets.append(both)
    return torch.tensor(queries, dtype=torch.long), torch.from_numpy(np.array(targets))


def dense_targets(boxes: np.ndarray, classes: WorldClasses, grid_thw: Any, merge: int) -> Any:
    """What each merged visual token shows, as (frame pairs x rows x cols, 10) class ids in the visual
    tokens' order, one column per ``DENSE_READINGS`` entry, -100 where a reading does not apply.

    A token is an object's when that object (its box averaged over the pair's two frames) covers a tenth
    of the token's cell or its centre lies in the cell; where objects compete, the one covering more (then
    the one drawn later, on top). ``object``: the object's shape x size word + 1, or 0 on a token no object
    touches; ``motion``: the object's motion; ``scene``: on a token no object touches, the scene's pattern x
    camera. A token an object touches but does not cover is left out of these three. ``centre``: on the
    token holding an object's centre, its shape x size word (where centres share a token, the object drawn
    later): the one token that sees the whole object, where most of an object's tokens see an edge of it.
    ``row`` and ``column``: the token's own grid place, on every token, so that the tokens keep their place
    in the frame for the text model to read (the content readings alone are the same wherever an object
    is, and training on them wears the position table's trace out of the tower's output: ``dataengine
    probe-student``). ``heading``: on a moving object's tokens (as ``motion``), its ``heading_bin``.
    ``extent``, ``x``, ``y``: on the centre token (as ``centre``), the object's ``extent_bin`` and its
    centre's place in ``PLACE_BINS`` of the frame.
    """
    import torch

    frame_pairs, rows, cols = (int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge)
    if max(rows, cols) > GRID_CLASSES:
        raise ConfigError(
            f"a {rows} x {cols} merged-token grid exceeds the dense head's {GRID_CLASSES} rows/columns: "
            "caption smaller frames or a larger patch_size"
        )
    r, c = np.indices((rows, cols))
    targets = np.full((frame_pairs, rows, cols, len(DENSE_READINGS)), -100, dtype=np.int64)
    read = {name: targets[..., k] for k, name in enumerate(DENSE_READINGS)}  # views into targets
    read["row"][...], read["column"][...] = r, c
    shape_size, motion, heading, extent = classes.subjects.T  # per subject, in caption order
    for p in range(frame_pairs):
        x0, y0, x1, y1 = boxes[:, 2 * p : 2 * p + 2].mean(axis=1).T[:, :, None, None]  # (subjects, 1, 1)
        overlap = (np.minimum(x1 * cols, c + 1) - np.maximum(x0 * cols, c)).clip(0) * (
            np.minimum(y1 * rows, r + 1) - np.maximum(y0 * rows, r)
        ).clip(0)  # (subjects, rows, cols): the fraction of each cell the box covers
        centre = (np.floor((x0 + x1) / 2 * cols) == c) & (np.floor((y0 + y1) / 2 * rows) == r)
        covers = (overlap >= 0.1) | centre
        ranked = np.where(covers, overlap + 1e-6 * np.arange(len(boxes))[:, None, None], -1.0)
        top = ranked.argmax(axis=0)
        on, touched = covers.any(axis=0), (overlap > 0).any(axis=0)
        read["object"][p, on] = 1 + shape_size[top[on]]
        read["motion"][p, on] = motion[top[on]]
        read["heading"][p, on] = heading[top[on]]
        read["object"][p, ~touched] = 0
        read["scene"][p, ~touched] = classes.scene
        for subject, at in enumerate(centre):
            read["centre"][p, at] = shape_size[subject]
            read["extent"][p, at] = extent[subject]
            read["x"][p, at] = _place_bin((x0[subject] + x1[subject]).item() / 2)
            read["y"][p, at] = _place_bin((y0[subject] + y1[subject]).item() / 2)
    return torch.from_numpy(targets.reshape(-1, len(DENSE_READINGS)))


def _place_bin(fraction: float) -> int:
    return min(PLACE_BINS - 1, max(0, int(fraction * PLACE_BINS)))


def split_dense_targets(targets: np.ndarray) -> dict[str, np.ndarray]:
    """``dense_targets``'s (tokens, 10) class ids (its object, motion and scene readings) undone into the
    world's own readings, per token a class id (-1 where the reading does not apply): the shape and size
    word of the object covering it (``SHAPES``, ``SIZES``), its motion (``MOTIONS``), and on empty tokens
    the scene's pattern and camera movement."""
    what, motion, scene = (targets[:, DENSE_READINGS.index(name)] for name in ("object", "motion", "scene"))
    on, empty = what > 0, scene >= 0
    return {
        "shape": np.where(on, (what - 1) // len(SIZES), -1),
        "size": np.where(on, (what - 1) % len(SIZES), -1),
        "motion": np.where(motion >= 0, motion, -1),
        "pattern": np.where(empty, scene // len(CAMERAS), -1),
        "camera": np.where(empty, scene % len(CAMERAS), -1),
    }
