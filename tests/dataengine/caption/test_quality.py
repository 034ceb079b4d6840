from __future__ import annotations

import pytest

from dataengine.caption.quality import QualityConfig, judge
from dataengine.caption.schema import Subject
from pipelines.gate_eval import reference_false_rejects
from tests.dataengine.caption.examples import GOOD

CFG = QualityConfig()


def test_a_good_caption_passes() -> None:
    verdict = judge(GOOD.model_dump_json(), "stop", CFG)
    assert verdict.ok and verdict.caption == GOOD and verdict.reason is None


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        ("", "stop", "empty output"),
        ("   \n", "stop", "empty output"),
        (GOOD.model_dump_json()[:50], "length", "truncated"),
        ("I'm sorry, but I can't help with describing this video.", "stop", "refusal-like"),
        ('{"summary": "a cat"}', "stop", "off-schema output at subjects: Field required"),
        ("not json at all", "stop", "off-schema output"),
        (GOOD.model_dump_json().replace("SCENE 1", "SCENE \\udbfc"), "stop", "Invalid JSON"),
        (GOOD.model_dump_json().replace("SCENE 1", "SCENE \\u0007"), "stop", "invalid characters"),
    ],
)
def test_bad_outputs_are_rejected_with_a_reason(text: str, finish: str, reason: str) -> None:
    verdict = judge(text, finish, CFG)
    assert not verdict.ok and verdict.reason is not None and reason in verdict.reason


def _with(**fields: object) -> str:
    return GOOD.model_copy(update=fields).model_dump_json()


def _subject(**fields: str) -> Subject:
    return GOOD.subjects[0].model_copy(update=fields)


def test_repetition_is_rejected() -> None:
    looping = _with(summary="the cat the cat the cat the cat the cat the cat the cat the cat the cat")
    verdict = judge(looping, "stop", CFG)
    assert not verdict.ok and "loop: 'the cat ' repeated" in (verdict.reason or "")
    stuck = _with(summary="red " * 9)
    assert "in a row" in (judge(stuck, "stop", CFG).reason or "")
    without_loop_test = CFG.model_copy(update={"loop_min_repeats": None})
    reason = judge(stuck, "stop", without_loop_test).reason or ""
    assert "repetitive: one word repeated 10 times in a row in caption" in reason


def test_an_empty_structure_is_rejected() -> None:
    empty = GOOD.model_copy(
        update={
            "summary": "",
            "subjects": [],
            "events": [],
            "setting": "",
            "lighting": "",
            "style": "",
            "on_screen_text": [],
            "camera": GOOD.camera.model_copy(
                update={"shot": "unknown", "angle": "unknown", "movement": "unknown"}
            ),
        }
    )
    assert "empty caption" in (judge(empty.model_dump_json(), "stop", CFG).reason or "")


def test_character_runs_and_events_outside_the_clip_are_rejected() -> None:
    assert "one character" in (judge(_with(style="vvvvvvvvvvvvvvvvvv"), "stop", CFG).reason or "")
    assert judge(GOOD.model_dump_json(), "stop", CFG, duration_s=2.0).ok
    late = judge(GOOD.model_dump_json(), "stop", CFG, duration_s=0.5)
    assert "outside the 0.5 s clip" in (late.reason or "")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        # loops inside a word, across words, and across a field of fragments, as the issue saw them
        (
            {"subjects": [_subject(motion="moves motionmotionmotionmotionmotionmotion")]},
            "loop: 'motion' repeated 6",
        ),
        (
            {"setting": "kindkindkindkindkindkindkind"},
            "loop: 'kind' repeated 7 times in a row (28 characters) in setting",
        ),
        ({"summary": "it moves left, left, left, left, left, left"}, "loop: ' left,' repeated 5 times"),
        ({"summary": "positionpositionpositionposition and more"}, "loop: 'position' repeated 4"),
        # number and punctuation garbage, unbalanced brackets, in prose fields
        (
            {"subjects": [_subject(position="at (10010 px wide, left")]},
            "unbalanced bracket '(' in subjects.0.position",
        ),
        ({"setting": "a floor ) with tiles"}, "unbalanced bracket ')'"),
        ({"summary": "12 , 40 ; 33 : 7 - 1 a"}, "number/punctuation garbage: 90% of tokens"),
        ({"lighting": "flat ;;,,;; light"}, "punctuation garbage: ';;,,;;'"),
        ({"style": "flat 2D at 1234567890 px"}, "number garbage: a 10-digit number"),
    ],
)
def test_degenerate_text_is_rejected_with_the_check_and_the_field(
    fields: dict[str, object], reason: str
) -> None:
    verdict = judge(_with(**fields), "stop", CFG)
    assert not verdict.ok and reason in (verdict.reason or ""), verdict.reason
    assert verdict.scores is not None and verdict.scores.compression_ratio > 0


def test_verbatim_on_screen_text_may_hold_numbers_and_symbols() -> None:
    assert judge(_with(on_screen_text=["12:45:30 -- 01/02/2026", "#1 ($20)"]), "stop", CFG).ok


def test_a_field_that_compresses_like_a_loop_is_rejected() -> None:
    # Phrases that cycle with variation escape the back-to-back loop test; zlib still sees the cycle.
    cycle = " ".join(f"the {c} shape turns" for c in ["red", "blue", "red", "green"] * 6)[:240]
    only_ratio = CFG.model_copy(update={"loop_min_repeats": None, "max_repeated_ngrams": 1.0})
    verdict = judge(_with(setting=cycle), "stop", only_ratio)
    assert not verdict.ok and "compresses like a loop: zlib ratio" in (verdict.reason or ""), verdict.reason
    assert "in setting" in (verdict.reason or "")


def test_confidence_is_measured_recorded_and_gated() -> None:
    text = GOOD.model_dump_json()
    sure = judge(text, "stop", CFG, logprobs=[-0.05] * 60)
    assert sure.ok and sure.scores is not None and sure.scores.confidence is not None
    assert sure.scores.confidence.mean_logprob == pytest.approx(-0.05)
    assert judge(text, "stop", CFG, logprobs=[-3.0] * 60).ok  # no floor set: measured, not judged
    floors = CFG.model_copy(update={"min_mean_logprob": -0.5, "min_window_logprob": -1.5})
    unsure = judge(text, "stop", floors, logprobs=[-0.9] * 60)
    assert (
        not unsure.ok and unsure.reason == "low confidence: mean token log-prob -0.900 under the floor -0.5"
    )
    # one unsure stretch in an otherwise sure output: the mean passes, the worst window does not
    stretch = [-0.02] * 100 + [-2.0] * 16 + [-0.02] * 100
    lapse = judge(text, "stop", floors, logprobs=stretch)
    assert not lapse.ok and "a 16-token window averages -2.000" in (lapse.reason or "")
    assert judge(text, "stop", floors).ok  # an engine without log-probs is not judged on them


def test_ground_truth_world_captions_are_never_rejected() -> None:
    report = reference_false_rejects(CFG, n=400, seed=11)
    assert report["false_rejects"] == 0, report["reasons"]
