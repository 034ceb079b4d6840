from __future__ import annotations

import pytest

from dataengine.caption.quality import QualityConfig, judge
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


def test_repetition_is_rejected() -> None:
    looping = _with(summary="the cat the cat the cat the cat the cat the cat the cat the cat the cat")
    verdict = judge(looping, "stop", CFG)
    assert not verdict.ok and "repetitive" in (verdict.reason or "")
    stuck = _with(summary="red " * 9)
    assert "in a row" in (judge(stuck, "stop", CFG).reason or "")


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
