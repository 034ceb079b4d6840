"""The world's caption language and the fidelity score: exact from the reference, one fact per wrong word."""

from __future__ import annotations

import numpy as np
import pytest

from dataengine.caption.quality import QualityConfig, judge
from dataengine.caption.schema import StructuredCaption, render_caption
from dataengine.world.fidelity import ATTRIBUTES, PSNR_CAP, Fidelity, score_shot, score_video
from dataengine.world.generate import random_spec
from dataengine.world.language import read_caption, reference_caption, shot_caption, video_captions
from dataengine.world.spec import ObjectSpec, ShotSpec, VideoSpec

W, H, FPS = 160, 120, 8


def _specs(n: int = 6) -> list[VideoSpec]:
    rng = np.random.default_rng(11)
    return [
        random_spec(rng, width=W, height=H, fps=FPS, max_shots=3, duration_range=(1.0, 2.5)) for _ in range(n)
    ]


def _shot() -> ShotSpec:
    """Two objects: a red circle drifting right, a blue square still; green stripes, camera panning left."""
    return ShotSpec(
        duration_s=1.5,
        background="green",
        pattern="stripes",
        pan_xy=(-10.0, 0.0),
        objects=[
            ObjectSpec(
                shape="circle", colour="red", size_px=30, start_xy=(30.0, 30.0), velocity_xy=(10.0, 0.0)
            ),
            ObjectSpec(
                shape="square", colour="blue", size_px=20, start_xy=(120.0, 90.0), velocity_xy=(-10.0, 0.0)
            ),
        ],
    )


def _perfect(scores: list) -> None:
    for s in scores:
        assert s.recall == 1.0 and s.precision == 1.0
        assert s.psnr == PSNR_CAP and s.object_iou == [1.0] * len(s.object_iou)


def test_reference_prose_rebuilds_every_video_exactly() -> None:
    for spec in _specs():
        caption = reference_caption(spec)
        assert caption.count("the scene cuts") == len(spec.shots) - 1
        _perfect(score_video(spec, caption))


def test_structured_caption_rebuilds_its_shot_exactly() -> None:
    for spec in _specs():
        for shot, caption in zip(spec.shots, video_captions(spec), strict=True):
            (read,) = read_caption(caption)
            _perfect([score_shot(shot, read, W, H, FPS)])
            (prose,) = read_caption(render_caption(caption))
            assert prose == read  # the prose says what the structure says


def test_world_captions_pass_the_quality_gate() -> None:
    for spec in _specs():
        for shot, caption in zip(spec.shots, video_captions(spec), strict=True):
            assert judge(caption.model_dump_json(), "stop", QualityConfig(), shot.duration_s).ok


def _with_subject(caption: StructuredCaption, index: int, **fields: str) -> StructuredCaption:
    subjects = list(caption.subjects)
    subjects[index] = subjects[index].model_copy(update=fields)
    return caption.model_copy(update={"subjects": subjects})


@pytest.mark.parametrize(
    ("field", "old", "new", "attribute"),
    [
        ("appearance", "red", "yellow", "colour"),
        ("kind", "circle", "triangle", "shape"),
        ("appearance", "large, 30 px", "small, 30 px", "size"),
        ("position", "upper left", "lower left", "position"),
        ("motion", "to the right", "to the left", "motion"),
    ],
)
def test_one_wrong_attribute_loses_exactly_that_fact(field: str, old: str, new: str, attribute: str) -> None:
    shot = _shot()
    truth = shot_caption(shot, W, H)
    assert old in getattr(truth.subjects[0], field)
    wrong = _with_subject(truth, 0, **{field: getattr(truth.subjects[0], field).replace(old, new)})
    (read,) = read_caption(wrong)
    score = score_shot(shot, read, W, H, FPS)
    total = sum(score.total.values())
    assert score.recalled[attribute] == score.total[attribute] - 1
    assert sum(score.recalled.values()) == total - 1
    assert score.stated == total and score.true_stated == total - 1
    # Words decide facts; the drawing follows the numbers, which stay right for size, position and motion.
    assert (score.psnr < PSNR_CAP) == (attribute in ("colour", "shape"))


@pytest.mark.parametrize(
    ("new", "row", "column"),
    [("lower left", 0, 1), ("top", 1, 0), ("lower right", 0, 0), ("upper left", 1, 1)],
)
def test_position_axes_say_which_way_a_start_region_is_wrong(new: str, row: int, column: int) -> None:
    shot = _shot()  # the red circle starts in the upper left, the blue square in the lower right
    truth = shot_caption(shot, W, H)
    wrong = _with_subject(truth, 0, position=truth.subjects[0].position.replace("upper left", new))
    (read,) = read_caption(wrong)
    score = score_shot(shot, read, W, H, FPS)
    assert score.position_axes == {"row": 1 + row, "column": 1 + column}
    both = Fidelity.of([score, score_shot(shot, None, W, H, FPS)])
    assert both.position_axes == {"row": (1 + row) / 4, "column": (1 + column) / 4}


def test_a_wrong_background_loses_one_fact_and_pixels() -> None:
    shot = _shot()
    caption = shot_caption(shot, W, H)
    wrong = caption.model_copy(update={"setting": caption.setting.replace("green", "purple")})
    (read,) = read_caption(wrong)
    score = score_shot(shot, read, W, H, FPS)
    assert score.recalled["background"] == 0 and score.recall == pytest.approx(13 / 14)
    assert score.iou == 1.0 and score.psnr < 20


def test_no_caption_scores_zero_and_an_extra_object_costs_precision_only() -> None:
    shot = _shot()
    empty = score_shot(shot, None, W, H, FPS)
    assert (empty.recall, empty.precision, empty.iou) == (0.0, 0.0, 0.0)
    caption = shot_caption(shot, W, H)
    extra = caption.model_copy(update={"subjects": [*caption.subjects, caption.subjects[0]]})
    (read,) = read_caption(extra)
    score = score_shot(shot, read, W, H, FPS)
    # The count is now wrong (3 vs 2); the duplicate's five attributes are stated and unmatched.
    assert score.recall == pytest.approx(13 / 14)
    assert score.stated == 14 + 5 and score.true_stated == 13


def test_free_prose_in_the_worlds_vocabulary_is_read() -> None:
    text = (
        "A large red circle starts in the upper left and moves down and to the right. "
        "A small blue triangle stays still at the bottom. "
        "The background is plain white, and the camera is static."
    )
    (read,) = read_caption(text)
    assert read.background == "white" and read.pattern == "flat" and read.camera == "static"
    first, second = read.objects
    assert (first.colour, first.shape, first.size, first.region, first.motion) == (
        "red", "circle", "large", "upper left", "down-right",
    )  # fmt: skip
    assert (second.colour, second.shape, second.size, second.region, second.motion) == (
        "blue", "triangle", "small", "bottom", "still",
    )  # fmt: skip


def test_fidelity_aggregates_micro_averages() -> None:
    shot = _shot()
    (read,) = read_caption(shot_caption(shot, W, H))
    both = Fidelity.of([score_shot(shot, read, W, H, FPS), score_shot(shot, None, W, H, FPS)])
    assert both.fact_recall == 0.5 and both.fact_precision == 1.0 and both.recon_iou == 0.5
    assert set(both.per_attribute) == set(ATTRIBUTES) and both.shots == 2
