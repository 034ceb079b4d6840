"""Pixels of the synthetic world: each frame of a ``VideoSpec``, each object's mask.

``frames_HWC`` is one uint8 RGB frame of H rows x W columns; coordinates and units are in ``spec``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dataengine.world.spec import PALETTE, PATTERN_MIX, PATTERN_PX, ShotSpec, VideoSpec


def _shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The second colour of a patterned background."""
    target = 0.0 if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] >= 128 else 255.0  # by BT.601 luma
    r, g, b = (round(c + (target - c) * PATTERN_MIX) for c in rgb)
    return r, g, b


def _pattern_mask(pattern: str, x_W: np.ndarray, y_H: np.ndarray) -> np.ndarray:
    """(H, W) bool: where the shade colour goes, given the world coordinates of pixel centres."""
    if pattern == "checker":
        cells_HW = np.floor(x_W / PATTERN_PX)[None, :] + np.floor(y_H / PATTERN_PX)[:, None]
    elif pattern == "stripes":
        cells_HW = np.floor((x_W[None, :] + y_H[:, None]) / PATTERN_PX)
    else:
        return np.zeros((len(y_H), len(x_W)), dtype=bool)
    return cells_HW.astype(np.int64) % 2 == 1


def _shape_mask(shape: str, dx_W: np.ndarray, dy_H: np.ndarray, size_px: int) -> np.ndarray:
    """(H, W) bool: pixels whose centre, at offset (dx, dy) from the object's centre, lies inside it."""
    r = size_px / 2
    dx, dy = dx_W[None, :], dy_H[:, None]
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    in_rows = (dy >= -r) & (dy < r)
    if shape == "square":
        return in_rows & (dx >= -r) & (dx < r)
    return in_rows & (np.abs(dx) <= (dy + r) / 2)  # triangle: apex at the top, base at the bottom


def render_shot(shot: ShotSpec, tau: float, width: int, height: int) -> np.ndarray:
    """frames_HWC of ``shot`` at ``tau`` seconds after it starts."""
    centres_x, centres_y = np.arange(width) + 0.5, np.arange(height) + 0.5
    pan_x, pan_y = shot.pan_xy[0] * tau, shot.pan_xy[1] * tau
    frame_HWC = np.empty((height, width, 3), dtype=np.uint8)
    frame_HWC[:] = PALETTE[shot.background]
    shade_HW = _pattern_mask(shot.pattern, centres_x + pan_x, centres_y + pan_y)
    frame_HWC[shade_HW] = _shade(PALETTE[shot.background])
    for obj, inside_HW in zip(shot.objects, object_masks(shot, tau, width, height), strict=True):
        frame_HWC[inside_HW] = PALETTE[obj.colour]
    return frame_HWC


def object_masks(shot: ShotSpec, tau: float, width: int, height: int) -> list[np.ndarray]:
    """One (H, W) bool mask per object of ``shot``: the pixels inside it ``tau`` seconds after the shot
    starts, whether or not a later object covers them."""
    centres_x, centres_y = np.arange(width) + 0.5, np.arange(height) + 0.5
    masks = []
    for obj in shot.objects:
        screen_x = obj.start_xy[0] + (obj.velocity_xy[0] - shot.pan_xy[0]) * tau
        screen_y = obj.start_xy[1] + (obj.velocity_xy[1] - shot.pan_xy[1]) * tau
        masks.append(_shape_mask(obj.shape, centres_x - screen_x, centres_y - screen_y, obj.size_px))
    return masks


def render_frames(spec: VideoSpec) -> Iterator[np.ndarray]:
    """Render the video frame by frame.

    Args:
        spec: the video to draw.

    Returns:
        An iterator over ``spec.n_frames`` frames_HWC (uint8 RGB, H = spec.height, W = spec.width); frame i
        shows time i / spec.fps.
    """
    starts = np.array([start for start, _ in spec.shot_times])
    for i in range(spec.n_frames):
        t = i / spec.fps
        k = max(0, int(np.searchsorted(starts, t + 1e-9, side="right")) - 1)
        yield render_shot(spec.shots[k], t - starts[k], spec.width, spec.height)
