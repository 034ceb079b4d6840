"""Checking a caption against the clip it describes, for captioners whose domain can be redrawn.

A reconstruction-grade caption is one a person could redraw the clip from. For the synthetic world that is
literal: ``language.read_caption`` reads the caption, ``fidelity.rebuild`` turns it into a scene and
``render.render_shot`` draws it, so the caption can be compared with the frames it claims to describe.
A world caption written for footage the world captioner has never seen (a street, a test card) is fluent
and schema-valid, and its tokens may be as confident as on world clips, but its redrawing looks nothing like
the frames. Compared at a fraction of the caption view's size (``downscale``), correct captions redraw well
above ``WorldRedrawConfig.min_psnr_db`` and out-of-domain footage below it; the measured separation is in
docs/quality-gate.md. Other captioners need another
verifier (a caption-to-clip match score); the field that holds this config is where it goes.

Legend: ``frames_THWC`` uint8 RGB as decoded for captioning; times in seconds.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field

from dataengine.caption.schema import StructuredCaption
from dataengine.config import Config
from dataengine.records import Frames
from dataengine.world.fidelity import rebuild
from dataengine.world.language import read_caption
from dataengine.world.render import render_shot


class WorldRedrawConfig(Config):
    """Refuse a caption whose redrawing differs from the frames by more than a PSNR floor."""

    kind: Literal["world-redraw"] = "world-redraw"
    min_psnr_db: float = Field(17.0, gt=0, description="redrawn frames vs decoded frames, over the window")
    downscale: int = Field(
        8, ge=1, description="compare at 1/downscale of the frames' size: layout and colour, not texture"
    )


def redraw_psnr(
    caption: StructuredCaption, frames: Frames, origin_s: float, width: int, height: int, downscale: int = 8
) -> float:
    """PSNR (dB) between ``frames`` and the scene the caption describes, drawn at the clip's ``width`` x
    ``height`` at each frame's time since ``origin_s`` (where the caption's time 0 is), both box-filtered to
    1/``downscale`` of the frames' size: a right caption of a panning checkerboard is off by a fraction of a
    pixel per second, which full-size PSNR punishes like a wrong scene."""
    shots = read_caption(caption)
    if not shots:
        return 0.0
    shot = rebuild(shots[0], max(frames.timestamps_s[-1] - origin_s, 1e-3), width, height)
    squared = 0.0
    for frame_HWC, t in zip(frames.frames_THWC, frames.timestamps_s, strict=True):
        drawn_HWC = render_shot(shot, max(0.0, float(t - origin_s)), width, height)
        size = (frame_HWC.shape[1], frame_HWC.shape[0])
        if drawn_HWC.shape != frame_HWC.shape:
            drawn_HWC = np.asarray(Image.fromarray(drawn_HWC).resize(size, Image.Resampling.BILINEAR))
        small = (max(1, size[0] // downscale), max(1, size[1] // downscale))
        a_hwc, b_hwc = (
            np.asarray(Image.fromarray(x).resize(small, Image.Resampling.BOX), dtype=np.float64)
            for x in (frame_HWC, drawn_HWC)
        )
        squared += float(((a_hwc - b_hwc) ** 2).mean())
    mse = squared / len(frames.frames_THWC)
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def redraw_problem(
    caption: StructuredCaption,
    frames: Frames,
    origin_s: float,
    width: int,
    height: int,
    config: WorldRedrawConfig,
) -> tuple[str | None, float]:
    """(why the caption does not describe these frames, or None; the PSNR measured)."""
    psnr = redraw_psnr(caption, frames, origin_s, width, height, config.downscale)
    if psnr >= config.min_psnr_db:
        return None, psnr
    return (
        f"redraw mismatch: the scene drawn from the caption differs from the frames ({psnr:.1f} dB PSNR, "
        f"floor {config.min_psnr_db:g} dB): footage outside what this captioner knows",
        psnr,
    )
