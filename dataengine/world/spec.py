"""The synthetic world's videos as data: a ``VideoSpec`` (shots, backgrounds, objects on straight paths) and
the palette. A spec plus the constants here and in ``render`` determine every pixel.

Coordinates and units:
  * Positions are in pixels, x to the right and y downwards; the centre of pixel (row i, column j) is at
    (j + 0.5, i + 0.5). A pixel belongs to a shape when its centre lies inside it (hard edges, no
    anti-aliasing); later objects are drawn over earlier ones.
  * Each shot has its own fixed world. At time t seconds after the shot starts, the camera has moved by
    ``pan_xy * t``, so a world point p is on screen at ``p - pan_xy * t``; at t = 0 world and screen
    coincide. An object's centre is at ``start_xy + velocity_xy * t`` in the world. Speeds are in px/s.
  * Frame i of a video shows time i / fps. Shots follow each other with hard cuts; a frame at time t
    belongs to the shot whose [start_s, end_s) contains t.
  * Backgrounds: ``flat`` is the background colour; ``stripes`` (diagonal bands, floor((x + y) / P) odd)
    and ``checker`` (floor(x / P) + floor(y / P) odd) paint every other cell in a shade of it (mixed
    ``PATTERN_MIX`` towards white, or towards black for light colours), with P = ``PATTERN_PX`` world pixels.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

ColourName = Literal["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
PALETTE: dict[ColourName, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 50),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 140, 30),
    "purple": (140, 60, 190),
}
PATTERN_PX = 20
PATTERN_MIX = 0.4


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectSpec(_Spec):
    """One shape moving in a straight line at constant velocity through its shot's world."""

    shape: Literal["circle", "square", "triangle"]
    colour: ColourName
    size_px: int = Field(ge=2, description="circle diameter, square side, triangle base and height")
    start_xy: tuple[float, float] = Field(description="centre (of the bounding box) at the shot start")
    velocity_xy: tuple[float, float] = Field(description="world velocity in px/s")


class ShotSpec(_Spec):
    """One continuous shot: a background, a camera pan and 1-3 objects."""

    duration_s: float = Field(gt=0)
    background: ColourName
    pattern: Literal["flat", "stripes", "checker"]
    pan_xy: tuple[float, float] = Field(default=(0.0, 0.0), description="camera velocity in px/s")
    objects: list[ObjectSpec] = Field(min_length=1, max_length=3)


class VideoSpec(_Spec):
    """A whole synthetic video: its geometry, its shots in order and the seed they were drawn with."""

    schema_version: Literal["1"] = "1"
    width: int = Field(ge=16)
    height: int = Field(ge=16)
    fps: int = Field(ge=1, le=240)
    shots: list[ShotSpec] = Field(min_length=1)
    seed: int = Field(default=0, description="provenance: random_spec drew every choice from this seed")

    @model_validator(mode="after")
    def _even_geometry(self) -> VideoSpec:
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even for yuv420p, got {self.width}x{self.height}")
        return self

    @property
    def duration_s(self) -> float:
        return self.shot_times[-1][1]

    @property
    def shot_times(self) -> list[tuple[float, float]]:
        """(start_s, end_s) of every shot; each cut is at the end of one shot and the start of the next."""
        ends = np.cumsum([shot.duration_s for shot in self.shots]).round(9).tolist()
        return list(zip([0.0, *ends[:-1]], ends, strict=True))

    @property
    def n_frames(self) -> int:
        return round(self.duration_s * self.fps)
