"""The model-free scores and the text detector on real clips, decoded by the real decode stage.

Each case (``tests/curation_cases.py``) must land where it should against ``moving``, the sharp, textured,
panning clip every other case is made from.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dataengine.curate.measure import (
    border_scores,
    brightness_scores,
    frozen_score,
    motion_scores,
    sharpness_score,
    text_scores,
)
from dataengine.curate.ocr import TextDetector
from dataengine.records import Frames
from dataengine.stages import ViewConfig
from tests.curation_cases import LETTERBOX_ACTIVE, decode_span

VIEWS = {
    "caption": ViewConfig(fps=2, max_frames=8, resize="short_side", size=112),
    "fast": ViewConfig(fps=8, max_frames=32, resize="short_side", size=112),  # strobes need a faster view
    "large": ViewConfig(fps=2, max_frames=8, resize="short_side", size=224),
}
PAN_SPEED = 20 * math.hypot(2, 1) / 240  # the moving case's pan, in short sides per second
TIME_SCORES = ("motion", "motion_patch_min", "frame_diff", "frozen", "fade", "flash")


def all_scores(frames: Frames) -> dict[str, float]:
    borders, _ = border_scores(frames)
    return {
        **motion_scores(frames),
        **frozen_score(frames),
        **brightness_scores(frames),
        **sharpness_score(frames),
        **borders,
    }


@pytest.fixture(scope="module")
def views(curation_cases: dict[str, Path]) -> dict[str, dict[str, Frames]]:
    """case -> view name -> frames, each case decoded whole (one 4 s clip) the way the pipeline does."""
    return {name: decode_span(path, VIEWS).views for name, path in curation_cases.items()}


@pytest.fixture(scope="module")
def scores(views: dict[str, dict[str, Frames]]) -> dict[str, dict[str, float]]:
    return {name: all_scores(v["caption"]) for name, v in views.items()}


@pytest.fixture(scope="module")
def detector() -> TextDetector:
    detector = TextDetector()
    detector.setup()
    return detector


def test_motion_is_the_pan_speed_whatever_the_view_rate_and_size(views: dict[str, dict[str, Frames]]) -> None:
    for view in ("caption", "fast", "large"):
        motion = motion_scores(views["moving"][view])
        assert motion["motion"] == pytest.approx(PAN_SPEED, rel=0.2), view
        assert motion["motion_patch_min"] > 0.6 * PAN_SPEED, view  # the whole picture pans
    cropped = motion_scores(views["cropped"]["caption"])["motion"]
    assert cropped == pytest.approx(PAN_SPEED / 0.9, rel=0.2)  # same pan, shown 1/0.9 times larger


def test_a_held_picture_is_frozen_and_still(scores: dict[str, dict[str, float]]) -> None:
    static, moving = scores["static"], scores["moving"]
    assert static["frozen"] == 1.0 and moving["frozen"] == 0.0
    assert static["motion"] < 0.01 * moving["motion"]
    assert static["frame_diff"] < 0.01 < moving["frame_diff"]


def test_black_and_blank(scores: dict[str, dict[str, float]]) -> None:
    assert scores["black"]["black"] == 1.0 and scores["black"]["blank"] == 1.0
    assert scores["black"]["luma"] < 0.02
    assert scores["moving"]["black"] == 0.0 and scores["moving"]["blank"] == 0.0
    assert scores["flash"]["black"] == 0.0 and scores["flash"]["blank"] == pytest.approx(0.5)  # white frames


def test_fade_in_from_black(scores: dict[str, dict[str, float]]) -> None:
    assert scores["fade"]["fade"] > 0.8
    for name in ("moving", "static", "black", "flash", "letterbox"):
        assert scores[name]["fade"] == 0.0, name


def test_fade_out_to_black(views: dict[str, dict[str, Frames]]) -> None:
    moving = views["moving"]["caption"]
    ramp_T = np.clip(np.linspace(3.0, -0.2, len(moving.frames_THWC)), 0, 1)  # full until halfway, then down
    faded_THWC = (moving.frames_THWC * ramp_T[:, None, None, None]).round().astype(np.uint8)
    assert brightness_scores(Frames(faded_THWC, moving.fps, moving.timestamps_s))["fade"] > 0.8


def test_strobe_is_counted_in_flashes_per_second(views: dict[str, dict[str, Frames]]) -> None:
    caption, fast = (brightness_scores(views["flash"][v])["flash"] for v in ("caption", "fast"))
    assert caption == pytest.approx(0.75)  # 2 fps sees alternation: 3 returns from white in 4 s
    assert 2.5 <= fast <= 3.0  # 8 fps resolves the 3 Hz strobe
    for view in ("caption", "fast"):
        assert brightness_scores(views["moving"][view])["flash"] == 0.0
        assert brightness_scores(views["fade"][view])["flash"] == 0.0  # a fade is no flash


def test_blur_lowers_sharpness_whatever_the_view_size(views: dict[str, dict[str, Frames]]) -> None:
    moving, blurry = (sharpness_score(views[n]["caption"])["sharpness"] for n in ("moving", "blurry"))
    assert blurry < 0.2 * moving
    large = sharpness_score(views["moving"]["large"])["sharpness"]
    assert large == pytest.approx(moving, rel=0.25)


def test_letterbox_borders(views: dict[str, dict[str, Frames]]) -> None:
    frames = views["letterbox"]["caption"]
    _, h, w, _ = frames.shape
    scores, box = border_scores(frames)
    assert scores["active_area"] == pytest.approx(LETTERBOX_ACTIVE, abs=0.05)
    assert box is not None and box[0] == 0 and box[2] == w
    assert box[1] == pytest.approx(h * (1 - LETTERBOX_ACTIVE) / 2, abs=2)
    assert border_scores(views["moving"]["caption"]) == ({"active_area": 1.0}, None)
    assert border_scores(views["black"]["caption"]) == ({"active_area": 1.0}, None)  # all border: none


def test_pillarbox_borders_and_sharpness_inside_them(views: dict[str, dict[str, Frames]]) -> None:
    moving = views["moving"]["caption"]
    padded_THWC = np.pad(moving.frames_THWC, ((0, 0), (0, 0), (40, 40), (0, 0)))
    padded = Frames(padded_THWC, moving.fps, moving.timestamps_s)
    scores, box = border_scores(padded)
    _, h, w, _ = moving.shape
    assert box == (40, 0, 40 + w, h)
    assert scores["active_area"] == pytest.approx(w / (w + 80))
    assert sharpness_score(padded)["sharpness"] == pytest.approx(sharpness_score(moving)["sharpness"])


def test_burned_in_text_is_found_and_clean_pictures_have_none(
    views: dict[str, dict[str, Frames]], detector: TextDetector
) -> None:
    text = text_scores(views["text"]["caption"], detector)
    assert text["text_frames"] == 1.0 and text["text_area"] > 0.2
    for name in ("moving", "different", "black"):
        assert text_scores(views[name]["caption"], detector) == {"text_area": 0.0, "text_frames": 0.0}, name


def test_text_boxes_lie_on_the_captions(views: dict[str, dict[str, Frames]], detector: TextDetector) -> None:
    frame_HWC = views["text"]["large"].frames_THWC[0]
    boxes = detector.boxes(frame_HWC)
    assert len(boxes) >= 3  # three caption lines
    h, w = frame_HWC.shape[:2]
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x0 < 0.2 * w  # the captions start at the left edge


def test_a_still_image_has_no_time_scores(views: dict[str, dict[str, Frames]]) -> None:
    still = views["still"]["caption"]
    assert still.shape[0] == 1
    scores = all_scores(still)
    for key in TIME_SCORES:
        assert math.isnan(scores[key]), key
    for key in set(scores) - set(TIME_SCORES):
        assert math.isfinite(scores[key]), key
    assert scores["sharpness"] == pytest.approx(all_scores(views["static"]["caption"])["sharpness"], rel=0.2)


def test_detector_needs_setup(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="setup"):
        TextDetector().boxes(np.zeros((32, 32, 3), np.uint8))
