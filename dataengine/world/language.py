"""The world's caption language: how a synthetic scene is described, and how a description is read back.

``shot_caption`` turns one shot of a ``VideoSpec`` into the ``StructuredCaption`` a perfect captioner would
write: every object's colour, shape, size, start position and on-screen motion, the background, the camera
and nothing the picture does not show. The numbers are exact (positions, sizes and velocities in the
spec's 0.1-pixel precision), so the caption determines every pixel of the shot. ``reference_caption`` is the
prose of a whole video: the shots' dense captions joined by "At T s the scene cuts."

``read_caption`` is the other direction, and reads **only** text: a structured caption's fields, or prose
through a deterministic parser for this world's vocabulary (colour, shape and size words, the nine screen
regions, compass directions, ``(x, y)`` pairs). What a caption does not say stays ``None``; ``fidelity``
scores what was read against the truth and re-renders the clip from it.

Conventions (see ``spec``): positions are object centres in pixels at the start of the shot, x to the
right and y down; motion in a caption is what a viewer sees (on-screen velocity = world velocity - pan).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from dataengine.caption.schema import Camera, Event, Movement, StructuredCaption, Subject, render_caption
from dataengine.world.spec import PALETTE, ShotSpec, VideoSpec

WORLD_VERSION = "2"  # the caption language; bump with any change to what shot_caption writes

Shape = Literal["circle", "square", "triangle"]
Pattern = Literal["flat", "stripes", "checker"]
SizeWord = Literal["small", "medium", "large"]
Region = Literal[
    "upper left", "top", "upper right", "left", "centre", "right", "lower left", "bottom", "lower right"
]  # fmt: skip
Motion = Literal[
    "still", "up", "down", "left", "right", "up-left", "up-right", "down-left", "down-right"
]  # fmt: skip

SHAPES: tuple[Shape, ...] = get_args(Shape)
REGIONS: tuple[Region, ...] = get_args(Region)  # row by row, three per row
SIZES: tuple[SizeWord, ...] = get_args(SizeWord)
MOTIONS: tuple[Motion, ...] = get_args(Motion)
PATTERNS: tuple[Pattern, ...] = get_args(Pattern)
CAMERAS = ("static", "pan left", "pan right", "tilt up", "tilt down")  # what camera_movement returns
STILL_PX_S = 4.0  # an object slower than this on screen is described as still
SIZE_EDGES = (0.17, 0.23)  # size / min(width, height): below the first is small, below the second medium
_SETTINGS = {
    "flat": "plain {} background",
    "stripes": "{} background with diagonal stripes",
    "checker": "{} background with a checkerboard pattern",
}
_COUNT = {1: "One shape moves", 2: "Two shapes move", 3: "Three shapes move"}
_STYLE = "flat 2D computer graphics"
_LIGHTING = "flat, even light with no shadows"


def size_word(size_px: float, width: int, height: int) -> SizeWord:
    ratio = size_px / min(width, height)
    return "small" if ratio < SIZE_EDGES[0] else "medium" if ratio < SIZE_EDGES[1] else "large"


def region_of(x: float, y: float, width: int, height: int) -> Region:
    """Which ninth of the frame a point lies in."""
    column = min(2, max(0, int(x * 3 // width)))
    row = min(2, max(0, int(y * 3 // height)))
    return REGIONS[3 * row + column]


# the eight directions counterclockwise from "right", each the word of a 45-degree sector around it
OCTANTS: tuple[Motion, ...] = (
    "right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right"
)  # fmt: skip


def motion_of(vx: float, vy: float) -> Motion:
    """The nearest of eight compass directions of an on-screen velocity (y down), or still."""
    if math.hypot(vx, vy) < STILL_PX_S:
        return "still"
    octant = round(math.atan2(-vy, vx) / (math.pi / 4)) % 8
    return OCTANTS[octant]


def _motion_phrase(motion: Motion) -> str:
    vertical, _, across = motion.partition("-") if "-" in motion else ("", "", motion)
    if motion in ("up", "down"):
        return motion
    if not vertical:
        return f"to the {across}"
    return f"{vertical} and to the {across}"


def _pair(x: float, y: float) -> str:
    return f"({_num(x)}, {_num(y)})"


def _num(x: float) -> str:
    """0.1-px precision, without a trailing ``.0``: random scenes are on the whole-pixel grid."""
    return f"{x:.1f}".removesuffix(".0") if abs(x) >= 0.05 else "0"


def shot_caption(shot: ShotSpec, width: int, height: int) -> StructuredCaption:
    """The dense caption of one shot, times relative to its start (exact numbers; see the module doc)."""
    subjects = []
    for obj in shot.objects:
        vx, vy = round(obj.velocity_xy[0] - shot.pan_xy[0], 1), round(obj.velocity_xy[1] - shot.pan_xy[1], 1)
        motion = motion_of(vx, vy)
        if motion == "still":
            moves = f"stays still, drifting at {_pair(vx, vy)} px/s" if (vx, vy) != (0, 0) else "stays still"
        else:
            moves = f"moves {_motion_phrase(motion)} at {_pair(vx, vy)} px/s"
        subjects.append(
            Subject(
                kind=obj.shape,
                appearance=f"{obj.colour}, {size_word(obj.size_px, width, height)}, {obj.size_px} px wide",
                position=f"{region_of(*obj.start_xy, width, height)}, centred at {_pair(*obj.start_xy)}",
                motion=moves,
            )
        )
    setting = _SETTINGS[shot.pattern].format(shot.background)
    movement = camera_movement(*shot.pan_xy)
    camera_event = (
        "the camera holds still"
        if movement == "static"
        else f"the camera moves ({movement}) at {_pair(*shot.pan_xy)} px/s"
    )
    return StructuredCaption(
        summary=f"{_COUNT[len(shot.objects)]} over a {setting}.",
        subjects=subjects,
        events=[Event(start_s=0.0, end_s=round(shot.duration_s, 2), description=camera_event)],
        setting=setting,
        lighting=_LIGHTING,
        camera=Camera(shot="wide", angle="eye level", movement=movement),
        style=_STYLE,
        on_screen_text=[],
    )


def camera_movement(pan_x: float, pan_y: float) -> Movement:
    """The camera's own motion as a schema word: horizontal pans win ties; y points down."""
    if (pan_x, pan_y) == (0.0, 0.0):
        return "static"
    if abs(pan_x) >= abs(pan_y):
        return "pan right" if pan_x > 0 else "pan left"
    return "tilt down" if pan_y > 0 else "tilt up"


def video_captions(spec: VideoSpec) -> list[StructuredCaption]:
    """One dense caption per shot, in order."""
    return [shot_caption(shot, spec.width, spec.height) for shot in spec.shots]


def _seconds(t: float) -> str:
    return f"{t:.2f}".rstrip("0").rstrip(".") if t % 1 else f"{t:.1f}"


def reference_caption(spec: VideoSpec) -> str:
    """The prose of a whole video: each shot's dense caption, "At T s the scene cuts." between shots."""
    first, *rest = video_captions(spec)
    parts = [render_caption(first)]
    for caption, (start_s, _) in zip(rest, spec.shot_times[1:], strict=True):
        parts += [f"At {_seconds(start_s)} s the scene cuts.", render_caption(caption)]
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class ReadObject:
    """What a caption says about one object; ``None`` where it says nothing."""

    colour: str | None = None
    shape: Shape | None = None
    size_px: float | None = None
    size: SizeWord | None = None
    start_xy: tuple[float, float] | None = None
    region: Region | None = None
    velocity_xy: tuple[float, float] | None = None  # on screen
    motion: Motion | None = None


@dataclass
class ReadShot:
    """What a caption says about one shot."""

    background: str | None = None
    pattern: Pattern | None = None
    camera: Movement | None = None
    pan_xy: tuple[float, float] | None = None
    objects: list[ReadObject] = field(default_factory=list)


_NUM = r"(-?\d+(?:\.\d+)?)"
_PAIR = re.compile(rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)")
_COLOURS = re.compile(r"\b(" + "|".join(PALETTE) + r")\b", re.IGNORECASE)
_SHAPE = re.compile(r"\b(circle|square|triangle)s?\b", re.IGNORECASE)
_SIZE_PX = re.compile(rf"{_NUM}\s*(?:px|pixels?)\s*(?:wide|across)", re.IGNORECASE)
_SIZE_WORD = re.compile(r"\b(small|medium|large)\b", re.IGNORECASE)
_REGION = re.compile(
    r"\b(upper left|upper right|lower left|lower right|top|bottom|left|right|centre|center)\b", re.IGNORECASE
)
_CENTRED = re.compile(rf"(?:centred|centered|centre|center)\s+at\s+{_PAIR.pattern}", re.IGNORECASE)
_VELOCITY = re.compile(rf"at\s+{_PAIR.pattern}\s*px/s", re.IGNORECASE)
_STILL = re.compile(r"\b(still|stationary|motionless|does not move)\b", re.IGNORECASE)
_CUT = re.compile(r"At \d+(?:\.\d+)? s the scene cuts\.")
_CAMERA_WORDS = {
    "pan right": "pan right", "pans right": "pan right", "pan left": "pan left", "pans left": "pan left",
    "tilt up": "tilt up", "tilts up": "tilt up", "tilt down": "tilt down", "tilts down": "tilt down",
    "static": "static", "holds still": "static", "is still": "static",
}  # fmt: skip


def read_caption(caption: StructuredCaption | str) -> list[ReadShot]:
    """Read a caption back into scenes: one ``ReadShot`` for a structured caption, one per shot for prose.

    Prose is split into shots at "At T s the scene cuts."; within a shot, each sentence that names exactly
    one shape is an object, the sentence starting "Setting:" (or any naming a background) is the
    background, and camera words anywhere set the camera.
    """
    if isinstance(caption, StructuredCaption):
        return [_read_structured(caption)]
    return [_read_prose(part) for part in _CUT.split(caption) if part.strip()]


def _read_structured(caption: StructuredCaption) -> ReadShot:
    shot = ReadShot()
    _read_setting(caption.setting, shot)
    shot.camera = None if caption.camera.movement == "unknown" else caption.camera.movement
    for event in caption.events:
        _read_camera(event.description, shot)
    for subject in caption.subjects:
        obj = _read_object(f"{subject.kind} {subject.appearance}", subject.position, subject.motion)
        if obj.colour is not None or obj.shape is not None:
            shot.objects.append(obj)
    return shot


def _read_prose(text: str) -> ReadShot:
    shot = ReadShot()
    for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text.strip()):
        if len({m.lower() for m in _SHAPE.findall(sentence)}) == 1 and not sentence.startswith("Setting"):
            looks, _, motion = sentence.partition(";")
            shot.objects.append(_read_object(looks, looks, motion or looks))
        elif sentence.startswith("Setting:") or (shot.background is None and "background" in sentence):
            _read_setting(sentence, shot)
        _read_camera(sentence, shot)
    return shot


def _read_setting(text: str, shot: ReadShot) -> None:
    colour = _COLOURS.search(text)
    shot.background = colour.group(1).lower() if colour else None
    lowered = text.lower()
    if "stripe" in lowered:
        shot.pattern = "stripes"
    elif "checker" in lowered:
        shot.pattern = "checker"
    elif colour:
        shot.pattern = "flat"


def _read_camera(text: str, shot: ReadShot) -> None:
    lowered = text.lower()
    if "camera" not in lowered:
        return
    for phrase, movement in _CAMERA_WORDS.items():
        if phrase in lowered:
            shot.camera = movement  # type: ignore[assignment]
            break
    if match := _VELOCITY.search(text):
        shot.pan_xy = float(match.group(1)), float(match.group(2))
    elif shot.camera == "static":
        shot.pan_xy = (0.0, 0.0)


def _read_object(looks: str, position: str, motion: str) -> ReadObject:
    obj = ReadObject()
    if colour := _COLOURS.search(looks):
        obj.colour = colour.group(1).lower()
    if shape := _SHAPE.search(looks):
        obj.shape = shape.group(1).lower()  # type: ignore[assignment]
    if size := _SIZE_PX.search(looks):
        obj.size_px = float(size.group(1))
    if word := _SIZE_WORD.search(looks):
        obj.size = word.group(1).lower()  # type: ignore[assignment]
    if centred := _CENTRED.search(position):
        obj.start_xy = float(centred.group(1)), float(centred.group(2))
    if region := _REGION.search(_CENTRED.sub("", position.split(";")[0])):
        obj.region = region.group(1).lower().replace("center", "centre")  # type: ignore[assignment]
    if velocity := _VELOCITY.search(motion):
        obj.velocity_xy = float(velocity.group(1)), float(velocity.group(2))
    obj.motion = _read_motion(motion)
    return obj


def _read_motion(text: str) -> Motion | None:
    lowered = text.lower()
    if _STILL.search(lowered):
        return "still"
    vertical = next((w for w in ("up", "down") if re.search(rf"\b{w}\b", lowered)), "")
    across = next((w for w in ("left", "right") if re.search(rf"to the {w}\b|\b{w}wards?\b", lowered)), "")
    if vertical and across:
        return f"{vertical}-{across}"  # type: ignore[return-value]
    return vertical or across or None  # type: ignore[return-value]
