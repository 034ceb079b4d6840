"""Model-free curation scores, measured on frames the decode stage already produced (its caption view).

Every function takes a ``Frames`` view (typically 2 fps, 8-16 frames, short side 112-448 px) and returns a
dict of floats. A score that needs time (two frames or more) is ``nan`` for a one-frame view (a still
image): NaN means "not measurable", and a filter never drops a clip for it.

Units and meaning of every score (*time*: NaN for a one-frame view):

- `motion` (short sides / s, *time*): mean optical-flow speed (OpenCV's DIS flow, on luma at <= 128 px, inside
  any borders) as a share of the frame's short side per second of clip time: independent of the view's fps and
  size. A pan of one frame height in 4 s is 0.25; a held picture ~0.
- `motion_patch_min` (short sides / s, *time*): the same speed averaged per patch of a 4x4 grid over the
  active area; the slowest patch. Low with a high `motion`: motion confined to part of the frame.
- `frame_diff` (0..1, luma, *time*): mean absolute luma difference between consecutive frames.
- `frozen` (0..1, share of pairs, *time*): consecutive frames identical up to codec noise (mean absolute luma
  difference < 1/255).
- `black` (0..1, share of frames): near-black frames: mean luma < 0.06 and luma standard deviation < 0.05.
- `blank` (0..1, share of frames): near-uniform frames of any colour: every RGB channel's standard
  deviation < 0.02.
- `fade` (0..1, strength, *time*): fade from or to black at the start or end: 1 - edge frame's luma / median
  luma, when luma ramps monotonically from the edge to the body; 0 without such a ramp; 1 when the edge frame
  is black.
- `flash` (flashes / s, *time*): frames whose mean luma rises by > 0.25 and falls back by > 0.25 within 0.5 s,
  per second of view. A view at f fps resolves at most f / 2 flashes per second: measure strobes on a faster
  view.
- `luma` (0..1): mean luma.
- `sharpness` ((luma 0..255)^2): median over frames of the variance of the Laplacian of Gaussian (sigma 1
  px) of luma, on the active area resized to a 128 px short side. Low is blurry: a sharp, textured picture
  scores tens to hundreds, a heavily blurred one a few.
- `edge_sharpness` (ratio, scale-free): median over frames of mean |Laplacian| / mean |Sobel gradient| on the
  frame's strongest 10% of gradients, at the same 128 px short side. Blur lowers it; flat areas do not count,
  so a sharp drawing on a plain background scores as sharp (its Laplacian variance is low). NaN: no edges.
- `active_area` (0..1, share of frame): the box inside letterbox / pillarbox borders (rows and columns
  near-black in every frame); 1.0 when none.
- `text_area` (0..1, share of frame): mean over <= 3 evenly spaced frames of the area a text detector's boxes
  cover (their union).
- `text_frames` (0..1, share of frames): sampled frames with any detected text.

Luma is BT.601 (``0.299 R + 0.587 G + 0.114 B``) scaled to 0..1 unless stated.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from dataengine.records import Frames

if TYPE_CHECKING:
    from dataengine.curate.ocr import TextDetector

FLOW_SIDE = 128  # optical flow runs on luma at most this short side (px)
# DIS flow (ultrafast preset) rather than Farneback: on a known pan both measure the speed within 4%, and DIS
# takes ~1.3 ms per 112x150 pair where Farneback (accurate settings: 4 levels, 21 px window) takes ~8 ms.
SHARPNESS_SIDE = 128  # the Laplacian is taken at exactly this short side (px)
# ... after a Gaussian blur of this sigma (px): without it the score follows the resampling (a 112 px view
# scored 2x less than a 224 px view of the same clip); with it, views of 112-448 px agree within ~12%.
SHARPNESS_SIGMA = 1.0
PATCH_GRID = 4  # motion_patch_min: the active area is cut into PATCH_GRID x PATCH_GRID patches
FROZEN_DIFF = 1 / 255  # mean |luma difference| below this: one picture (x264 refining a held frame: 0.8/255)
BLACK_LUMA, BLACK_STD = 0.06, 0.05  # a frame darker than this and this flat is black
BLANK_STD = 0.02  # every RGB channel flatter than this (0..1): a blank frame
BORDER_MEAN, BORDER_MAX = 0.06, 0.15  # a border row/column: mean and max luma over all frames below these
MIN_ACTIVE = 16  # px: a smaller "active box" is a dark picture with a small light in it, not bordered content
FADE_STEP_TOL = 0.01  # luma may dip this much between frames and still count as a monotone ramp
FADE_BODY = 0.9  # the ramp ends where luma reaches this share of the clip's median luma
FLASH_JUMP = 0.25  # mean-luma rise (and fall) that makes a flash
FLASH_RETURN_S = 0.5  # a flash falls back within this time
EDGE_MIN_GRADIENT, EDGE_MIN_PIXELS = 8.0, 20  # edge_sharpness: what counts as an edge, and enough of them
TEXT_FRAMES = 3  # frames handed to the text detector


def motion_scores(frames: Frames) -> dict[str, float]:
    """``motion``, ``motion_patch_min`` (short sides / s) and ``frame_diff`` (0..1); NaN for one frame."""
    if len(frames.frames_THWC) < 2:
        return {"motion": math.nan, "motion_patch_min": math.nan, "frame_diff": math.nan}
    gray_THW = _gray(frames, max_side=FLOW_SIDE)
    box = _active_box(gray_THW) or (0, 0, gray_THW.shape[2], gray_THW.shape[1])
    x0, y0, x1, y1 = box
    gray_THW = np.ascontiguousarray(gray_THW[:, y0:y1, x0:x1])
    short = min(gray_THW.shape[1:])
    dts = np.maximum(np.diff(frames.timestamps_s), 1e-6)
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    speeds, patches, diffs = [], [], []
    for (a, b), dt in zip(itertools.pairwise(gray_THW), dts, strict=True):
        flow = dis.calc(a, b, None)  # type: ignore[call-overload]  # None: a new output (the stubs omit it)
        speed_HW = cv2.magnitude(flow[..., 0], flow[..., 1]) / (short * dt)
        speeds.append(float(speed_HW.mean()))
        patches.append(_patch_means(speed_HW))
        diffs.append(float(cv2.absdiff(a, b).mean()) / 255)
    return {
        "motion": float(np.mean(speeds)),
        "motion_patch_min": float(np.mean(patches, axis=0).min()),
        "frame_diff": float(np.mean(diffs)),
    }


def frozen_score(frames: Frames) -> dict[str, float]:
    """``frozen``: share of consecutive pairs that are one picture up to codec noise; NaN for one frame."""
    if len(frames.frames_THWC) < 2:
        return {"frozen": math.nan}
    gray_THW = _gray(frames)
    diffs = [float(cv2.absdiff(a, b).mean()) / 255 for a, b in itertools.pairwise(gray_THW)]
    return {"frozen": float(np.mean(np.asarray(diffs) < FROZEN_DIFF))}


def brightness_scores(frames: Frames) -> dict[str, float]:
    """``black``, ``blank``, ``fade``, ``flash``, ``luma`` (see the module's legend); ``fade`` and ``flash``
    are NaN for one frame."""
    gray_THW = _gray(frames)
    stats = [cv2.meanStdDev(g) for g in gray_THW]
    mean_T = np.array([m[0, 0] for m, _ in stats]) / 255
    std_T = np.array([s[0, 0] for _, s in stats]) / 255
    channel_std_T = np.array([cv2.meanStdDev(f)[1].max() for f in frames.frames_THWC]) / 255
    one = len(mean_T) < 2
    return {
        "black": float(np.mean((mean_T < BLACK_LUMA) & (std_T < BLACK_STD))),
        "blank": float(np.mean(channel_std_T < BLANK_STD)),
        "fade": math.nan if one else max(_fade_in(mean_T), _fade_in(mean_T[::-1])),
        "flash": math.nan if one else _flash_rate(mean_T, frames),
        "luma": float(mean_T.mean()),
    }


def sharpness_score(frames: Frames) -> dict[str, float]:
    """``sharpness``: median variance of the Laplacian of Gaussian of luma at a 128 px short side, inside any
    borders."""
    gray_THW = _gray(frames)
    box = _active_box(gray_THW)
    if box is not None:
        x0, y0, x1, y1 = box
        gray_THW = gray_THW[:, y0:y1, x0:x1]
    h, w = gray_THW.shape[1:]
    scale = SHARPNESS_SIDE / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = [cv2.resize(g, size, interpolation=interpolation) for g in gray_THW]
    edges = [e for g in resized if not math.isnan(e := _edge_sharpness(g))]
    return {
        "sharpness": float(np.median([_log_variance(g) for g in resized])),
        "edge_sharpness": float(np.median(edges)) if edges else math.nan,
    }


def _edge_sharpness(gray_HW: np.ndarray) -> float:
    """Mean |Laplacian| over mean |gradient| on the frame's edges (its strongest 10% of gradients, at least
    EDGE_MIN_GRADIENT); NaN when fewer than EDGE_MIN_PIXELS edge pixels (a flat frame has no edges to judge).
    Blur spreads an edge, lowering its second derivative against its first; flat areas do not count, so a
    sharp drawing on a plain background is not called blurry (the Laplacian's variance would be)."""
    g = gray_HW.astype(np.float32)
    magnitude = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
    edges = magnitude > max(EDGE_MIN_GRADIENT, float(np.percentile(magnitude, 90)))
    if edges.sum() < EDGE_MIN_PIXELS:
        return math.nan
    laplacian = np.abs(cv2.Laplacian(g, cv2.CV_32F))
    return float(laplacian[edges].mean() / magnitude[edges].mean())


def border_scores(frames: Frames) -> tuple[dict[str, float], tuple[int, int, int, int] | None]:
    """``active_area`` and the active box ``(x0, y0, x1, y1)`` (view pixels, end exclusive), or None when
    there are no borders (or nothing but black, which ``black`` reports)."""
    gray_THW = _gray(frames)
    box = _active_box(gray_THW)
    if box is None:
        return {"active_area": 1.0}, None
    x0, y0, x1, y1 = box
    return {"active_area": (x1 - x0) * (y1 - y0) / (gray_THW.shape[1] * gray_THW.shape[2])}, box


def text_scores(frames: Frames, detector: TextDetector) -> dict[str, float]:
    """``text_area`` and ``text_frames`` from ``detector`` on at most 3 evenly spaced frames."""
    areas = np.array([detector.text_area(f) for f in frames.subsample(TEXT_FRAMES).frames_THWC])
    return {"text_area": float(areas.mean()), "text_frames": float(np.mean(areas > 0))}


def _gray(frames: Frames, max_side: int | None = None) -> np.ndarray:
    """BT.601 luma as uint8 (T, H, W), shrunk so the short side is at most ``max_side``."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames.frames_THWC]
    h, w = gray[0].shape
    if max_side is not None and min(h, w) > max_side:
        scale = max_side / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        gray = [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in gray]
    return np.stack(gray)


def _log_variance(gray_HW: np.ndarray) -> float:
    """Variance of the Laplacian of Gaussian (sigma ``SHARPNESS_SIGMA``) of one uint8 luma frame."""
    return float(cv2.Laplacian(cv2.GaussianBlur(gray_HW, (0, 0), SHARPNESS_SIGMA), cv2.CV_32F).var())


def _active_box(gray_THW: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box inside rows/columns that are near-black in every frame; None if none are, or (nearly) all."""
    rows = _content(gray_THW.mean(axis=(0, 2)), gray_THW.max(axis=(0, 2)))
    cols = _content(gray_THW.mean(axis=(0, 1)), gray_THW.max(axis=(0, 1)))
    if not rows.any() or not cols.any():
        return None
    y = np.flatnonzero(rows)
    x = np.flatnonzero(cols)
    box = (int(x[0]), int(y[0]), int(x[-1]) + 1, int(y[-1]) + 1)
    if box == (0, 0, len(cols), len(rows)) or min(box[2] - box[0], box[3] - box[1]) < MIN_ACTIVE:
        return None
    return box


def _content(mean: np.ndarray, peak: np.ndarray) -> np.ndarray:
    return (mean >= BORDER_MEAN * 255) | (peak >= BORDER_MAX * 255)


def _patch_means(speed_HW: np.ndarray) -> np.ndarray:
    h, w = speed_HW.shape
    ys = np.linspace(0, h, PATCH_GRID + 1).astype(int)
    xs = np.linspace(0, w, PATCH_GRID + 1).astype(int)
    return np.array(
        [speed_HW[ys[i] : max(ys[i + 1], ys[i] + 1), xs[j] : max(xs[j + 1], xs[j] + 1)].mean()
         for i in range(PATCH_GRID) for j in range(PATCH_GRID)]
    )  # fmt: skip


def _fade_in(mean_T: np.ndarray) -> float:
    """Fade strength at the start of ``mean_T``: 1 - edge luma / median luma, when luma ramps up
    monotonically over two steps or more (one step only from black: at 2 fps a short fade is one step)."""
    body = float(np.median(mean_T))
    if body < BLACK_LUMA:
        return 0.0  # a dark clip throughout: ``black`` speaks for it
    reached = np.flatnonzero(mean_T >= FADE_BODY * body)
    end = int(reached[0])
    if end == 0 or np.any(np.diff(mean_T[: end + 1]) < -FADE_STEP_TOL):
        return 0.0
    if end == 1 and mean_T[0] >= BLACK_LUMA:
        return 0.0
    return float(np.clip(1 - mean_T[0] / body, 0.0, 1.0))


def _flash_rate(mean_T: np.ndarray, frames: Frames) -> float:
    """Flashes per second of view: rises by > FLASH_JUMP that fall back by as much within FLASH_RETURN_S."""
    times = frames.timestamps_s
    flashes = 0
    for i in np.flatnonzero(np.diff(mean_T) > FLASH_JUMP) + 1:
        window = (times > times[i]) & (times <= times[i] + FLASH_RETURN_S + 1e-6)
        if np.any(mean_T[window] < mean_T[i] - FLASH_JUMP):
            flashes += 1
    return flashes / (len(mean_T) / frames.fps)
