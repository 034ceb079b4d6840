from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from dataengine.caption.prompts import PROMPTS, get_prompt
from dataengine.caption.schema import StructuredCaption, json_schema, render_caption, render_short
from tests.dataengine.caption.examples import GOOD


def _walk(node: object) -> list[dict[str, object]]:
    if isinstance(node, dict):
        return [node, *(n for v in node.values() for n in _walk(v))]
    if isinstance(node, list):
        return [n for v in node for n in _walk(v)]
    return []


def test_schema_is_bounded_everywhere() -> None:
    nodes = _walk(json_schema())
    strings = [n for n in nodes if n.get("type") == "string" and "enum" not in n]
    arrays = [n for n in nodes if n.get("type") == "array"]
    numbers = [n for n in nodes if n.get("type") == "number"]
    assert strings and all("maxLength" in n for n in strings)
    assert arrays and all("maxItems" in n for n in arrays)
    assert numbers and all("maximum" in n and "minimum" in n for n in numbers)
    objects = [n for n in nodes if n.get("type") == "object"]
    assert all(n.get("additionalProperties") is False for n in objects)


def test_over_long_fields_are_rejected() -> None:
    data = GOOD.model_dump()
    data["summary"] = "x" * 241
    with pytest.raises(ValidationError, match="at most 240 characters"):
        StructuredCaption.model_validate(data)


def test_rendering_is_deterministic_and_mentions_every_field() -> None:
    text = render_caption(GOOD)
    assert text == render_caption(StructuredCaption.model_validate_json(GOOD.model_dump_json()))
    for needle in (
        "A red circle rolls right",
        "Red circle: flat bright red disc",
        "moves right at about 30 px/s",
        "From 0.0 s to 2.0 s",
        "Setting: a blue",
        "Lighting: flat",
        "Camera: wide shot at eye level angle, camera pan left",
        "Style: flat 2D",
        'On-screen text: "SCENE 1"',
    ):
        assert needle in text, needle
    assert render_short(GOOD) == "A red circle rolls right across a blue checkered floor."
    assert json.loads(GOOD.model_dump_json())["camera"]["movement"] == "pan left"


def test_prompts_have_unique_ids_and_render() -> None:
    assert set(PROMPTS) == {"dense-v1", "dense-image-v1", "fuse-v1", "enhance-v1"}
    text = get_prompt("dense-v1").render(duration_s=2.0, n_frames=4, fps=2.0)
    assert "2.0 seconds long (4 frames at 2.00 fps)" in text
    with pytest.raises(KeyError, match="known"):
        get_prompt("nope")


def test_event_times_can_be_bounded_by_the_clip() -> None:
    event = json_schema(duration_s=2.04)["$defs"]["Event"]["properties"]
    assert event["start_s"]["maximum"] == event["end_s"]["maximum"] == 2.1
    assert json_schema()["$defs"]["Event"]["properties"]["end_s"]["maximum"] == 3600
