"""Caption fidelity on the synthetic world: how many true facts a caption states, and how well the clip can
be redrawn from the caption alone.

Facts of a shot: four about the scene (object count, background colour, background pattern, camera
movement) and five per object (colour, shape, size word, start region, on-screen motion direction), all
in the vocabulary of ``language``. A caption's objects are matched one-to-one to the true objects so that
the most attributes agree; then

* **fact recall** = true facts the caption states / all true facts,
* **fact precision** = stated facts that are true / all stated facts (an extra object's attributes count
  as stated and false),

and one wrong attribute loses exactly one fact on each side. A start region is two readings, its row of
the 3 x 3 grid (top, middle, bottom) and its column (left, centre, right): **position axes** says how often
each is right, so that a captioner that knows where things are across but not up and down shows it.

**Blind reconstruction** renders the shot from what was read (``rebuild``; what the caption leaves out
gets a neutral default) and compares it with the true render over every frame: PSNR of the pixels (capped
at ``PSNR_CAP`` dB when identical) and, per true object, the IoU of its mask with its matched object's
mask summed over time (0 when unmatched).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from dataengine.caption.schema import StructuredCaption
from dataengine.world.language import (
    REGIONS,
    ReadObject,
    ReadShot,
    Region,
    camera_movement,
    motion_of,
    read_caption,
    region_of,
    size_word,
)
from dataengine.world.render import object_masks, render_shot
from dataengine.world.spec import ColourName, ObjectSpec, ShotSpec, VideoSpec

SCENE_ATTRIBUTES = ("count", "background", "pattern", "camera")
OBJECT_ATTRIBUTES = ("colour", "shape", "size", "position", "motion")
ATTRIBUTES = SCENE_ATTRIBUTES + OBJECT_ATTRIBUTES
POSITION_AXES = ("row", "column")  # of the start region in the 3 x 3 grid (REGIONS, row by row)
PSNR_CAP = 100.0
_SIZE_OF_WORD = {"small": 0.15, "medium": 0.2, "large": 0.26}  # x min(width, height)
_DEFAULT_SPEED = 30.0  # px/s, for a direction stated without numbers
_DEFAULT_PAN = 25.0
_DIRECTIONS = {
    "still": (0, 0), "up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0),
    "up-left": (-1, -1), "up-right": (1, -1), "down-left": (-1, 1), "down-right": (1, 1),
}  # fmt: skip
_PANS = {"pan right": (1, 0), "pan left": (-1, 0), "tilt down": (0, 1), "tilt up": (0, -1)}

Facts = dict[str, object]


def shot_facts(shot: ShotSpec, width: int, height: int) -> tuple[Facts, list[Facts]]:
    """The true scene facts and per-object facts of a shot."""
    scene: Facts = {
        "count": len(shot.objects),
        "background": shot.background,
        "pattern": shot.pattern,
        "camera": camera_movement(*shot.pan_xy),
    }
    objects: list[Facts] = []
    for obj in shot.objects:
        screen_v = obj.velocity_xy[0] - shot.pan_xy[0], obj.velocity_xy[1] - shot.pan_xy[1]
        objects.append(
            {
                "colour": obj.colour,
                "shape": obj.shape,
                "size": size_word(obj.size_px, width, height),
                "position": region_of(*obj.start_xy, width, height),
                "motion": motion_of(*screen_v),
            }
        )
    return scene, objects


def read_facts(read: ReadShot, width: int, height: int) -> tuple[Facts, list[Facts]]:
    """The facts a read caption states (words first, numbers where words are missing); unstated ones are
    absent."""
    scene: Facts = {"count": len(read.objects)}
    for name, value in (("background", read.background), ("pattern", read.pattern), ("camera", read.camera)):
        if value is not None:
            scene[name] = value
    objects: list[Facts] = []
    for obj in read.objects:
        facts: Facts = {"colour": obj.colour, "shape": obj.shape}
        facts["size"] = obj.size or (size_word(obj.size_px, width, height) if obj.size_px else None)
        facts["position"] = obj.region or (region_of(*obj.start_xy, width, height) if obj.start_xy else None)
        facts["motion"] = obj.motion or (motion_of(*obj.velocity_xy) if obj.velocity_xy else None)
        objects.append({k: v for k, v in facts.items() if v is not None})
    return scene, objects


def match_objects(truth: Sequence[Facts], stated: Sequence[Facts]) -> list[int | None]:
    """For each true object, the index of its stated object (or None): the one-to-one assignment with the
    most agreeing attributes; ties go to caption order."""
    slots: list[int | None] = [*range(len(stated)), *([None] * len(truth))]
    best: tuple[int, ...] | None = None
    best_score = -1
    for assignment in itertools.permutations(range(len(slots)), len(truth)):
        score = 0
        for true_obj, j in zip(truth, assignment, strict=True):
            slot = slots[j]
            score += _agreeing(true_obj, stated[slot]) if slot is not None else 0
        if score > best_score:
            best, best_score = assignment, score
    assert best is not None
    return [slots[j] for j in best]


def _cell(region: object) -> tuple[int, int]:
    """A start region's (row, column) in the 3 x 3 grid."""
    return divmod(REGIONS.index(cast(Region, region)), 3)


def _agreeing(truth: Facts, stated: Facts) -> int:
    return sum(1 for k, v in stated.items() if truth.get(k) == v)


@dataclass
class ShotScore:
    """Scores of one caption of one shot."""

    recalled: dict[str, int]  # per attribute: true facts the caption states
    total: dict[str, int]  # per attribute: true facts
    stated: int  # facts the caption states
    true_stated: int  # of which true
    psnr: float  # dB, PSNR_CAP when identical
    object_iou: list[float] = field(default_factory=list)  # per true object
    # per POSITION_AXES: true objects whose stated start region has its row (column) right
    position_axes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(POSITION_AXES, 0))

    @property
    def recall(self) -> float:
        return sum(self.recalled.values()) / max(1, sum(self.total.values()))

    @property
    def precision(self) -> float:
        return self.true_stated / self.stated if self.stated else 0.0

    @property
    def iou(self) -> float:
        return float(np.mean(self.object_iou)) if self.object_iou else 0.0


def score_shot(truth: ShotSpec, read: ReadShot | None, width: int, height: int, fps: float) -> ShotScore:
    """Facts and blind reconstruction of one shot from what a caption said about it (None: no caption)."""
    true_scene, true_objects = shot_facts(truth, width, height)
    total = {a: (1 if a in SCENE_ATTRIBUTES else len(true_objects)) for a in ATTRIBUTES}
    recalled = dict.fromkeys(ATTRIBUTES, 0)
    if read is None:
        read = ReadShot()
        stated_scene: Facts = {}
        stated_objects: list[Facts] = []
    else:
        stated_scene, stated_objects = read_facts(read, width, height)
    for name, value in stated_scene.items():
        recalled[name] += int(true_scene[name] == value)
    matches = match_objects(true_objects, stated_objects)
    axes = dict.fromkeys(POSITION_AXES, 0)
    for true_obj, j in zip(true_objects, matches, strict=True):
        if j is not None:
            for name, value in stated_objects[j].items():
                recalled[name] += int(true_obj[name] == value)
            if "position" in stated_objects[j]:
                true_cell, stated_cell = _cell(true_obj["position"]), _cell(stated_objects[j]["position"])
                for axis, a, b in zip(POSITION_AXES, true_cell, stated_cell, strict=True):
                    axes[axis] += int(a == b)
    stated = len(stated_scene) + sum(len(o) for o in stated_objects)
    rebuilt = rebuild(read, truth.duration_s, width, height)
    psnr, ious = _compare(truth, rebuilt, matches, width, height, fps)
    return ShotScore(recalled, total, stated, sum(recalled.values()), psnr, ious, axes)


def score_video(spec: VideoSpec, caption: StructuredCaption | str | None) -> list[ShotScore]:
    """One score per shot of ``spec``; shots the caption does not reach score as uncaptioned."""
    read = read_caption(caption) if caption is not None else []
    return [
        score_shot(shot, read[i] if i < len(read) else None, spec.width, spec.height, spec.fps)
        for i, shot in enumerate(spec.shots)
    ]


def rebuild(read: ReadShot, duration_s: float, width: int, height: int) -> ShotSpec:
    """The shot as drawn from the caption alone. Defaults for what it does not say: black flat background,
    still camera, white, a medium square, the frame centre (or the region's centre), no motion."""
    pan = read.pan_xy
    if pan is None:
        unit = _PANS.get(read.camera or "", (0, 0))
        pan = unit[0] * _DEFAULT_PAN, unit[1] * _DEFAULT_PAN
    objects = [_rebuild_object(obj, pan, width, height) for obj in read.objects]
    return ShotSpec.model_construct(  # may hold no object: a caption can name none
        duration_s=duration_s,
        background=cast(ColourName, read.background or "black"),
        pattern=read.pattern or "flat",
        pan_xy=pan,
        objects=objects,
    )


def _rebuild_object(obj: ReadObject, pan: tuple[float, float], width: int, height: int) -> ObjectSpec:
    short = min(width, height)
    size = obj.size_px if obj.size_px else _SIZE_OF_WORD[obj.size or "medium"] * short
    if obj.start_xy is not None:
        start = obj.start_xy
    elif obj.region is not None:
        row, column = _cell(obj.region)
        start = ((column + 0.5) * width / 3, (row + 0.5) * height / 3)
    else:
        start = (width / 2, height / 2)
    if obj.velocity_xy is not None:
        screen = obj.velocity_xy
    else:
        dx, dy = _DIRECTIONS[obj.motion or "still"]
        norm = math.hypot(dx, dy) or 1.0
        screen = dx / norm * _DEFAULT_SPEED, dy / norm * _DEFAULT_SPEED
    return ObjectSpec(
        shape=obj.shape or "square",
        colour=cast(ColourName, obj.colour or "white"),
        size_px=max(2, round(size)),
        start_xy=start,
        # Captions state on-screen motion; the world moves with the camera added back (0.1 px/s grid).
        velocity_xy=(round(screen[0] + pan[0], 1), round(screen[1] + pan[1], 1)),
    )


def _compare(
    truth: ShotSpec, rebuilt: ShotSpec, matches: list[int | None], width: int, height: int, fps: float
) -> tuple[float, list[float]]:
    squared, pixels = 0.0, 0
    inter = np.zeros(len(truth.objects))
    union = np.zeros(len(truth.objects))
    for i in range(max(1, round(truth.duration_s * fps))):
        tau = i / fps
        a_HWC = render_shot(truth, tau, width, height).astype(np.float64)
        b_HWC = render_shot(rebuilt, tau, width, height).astype(np.float64)
        squared += float(((a_HWC - b_HWC) ** 2).sum())
        pixels += a_HWC.size
        true_masks = object_masks(truth, tau, width, height)
        rebuilt_masks = object_masks(rebuilt, tau, width, height)
        for k, (mask_HW, j) in enumerate(zip(true_masks, matches, strict=True)):
            other_HW = rebuilt_masks[j] if j is not None else np.zeros_like(mask_HW)
            inter[k] += (mask_HW & other_HW).sum()
            union[k] += (mask_HW | other_HW).sum()
    mse = squared / pixels
    psnr = PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))
    return psnr, [float(i / u) if u else 0.0 for i, u in zip(inter, union, strict=True)]


@dataclass
class Fidelity:
    """Scores over many shots: micro-averaged facts, mean PSNR, mean IoU over all true objects."""

    fact_recall: float
    fact_precision: float
    recon_psnr: float
    recon_iou: float
    per_attribute: dict[str, float]
    shots: int
    # per POSITION_AXES: the start region's row (column) right, over true objects
    position_axes: dict[str, float]

    @classmethod
    def of(cls, scores: Sequence[ShotScore]) -> Fidelity:
        recalled = {a: sum(s.recalled[a] for s in scores) for a in ATTRIBUTES}
        total = {a: sum(s.total[a] for s in scores) for a in ATTRIBUTES}
        stated = sum(s.stated for s in scores)
        ious = [iou for s in scores for iou in s.object_iou]
        return cls(
            fact_recall=sum(recalled.values()) / max(1, sum(total.values())),
            fact_precision=sum(s.true_stated for s in scores) / stated if stated else 0.0,
            recon_psnr=float(np.mean([s.psnr for s in scores])) if scores else 0.0,
            recon_iou=float(np.mean(ious)) if ious else 0.0,
            per_attribute={a: recalled[a] / total[a] if total[a] else 0.0 for a in ATTRIBUTES},
            shots=len(scores),
            position_axes={
                axis: sum(s.position_axes[axis] for s in scores) / total["position"]
                if total["position"]
                else 0.0
                for axis in POSITION_AXES
            },
        )
