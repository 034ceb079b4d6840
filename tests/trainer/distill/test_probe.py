"""probe-student: where each attribute's value starts, the position probe, and the contents probe that holds
out whole clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.distill.tokens import encode_pair


@pytest.mark.slow
def test_probe_places_values_and_finds_positions_where_the_table_holds_them(
    student: tuple[Path, list],
) -> None:
    """probe-student scores each attribute at the first token of its value, and its linear probe reads the
    grid position from the tower's input exactly when the family adds a position table there."""
    import re

    from transformers import AutoProcessor

    from trainer.distill.probe import ATTRIBUTE_PATTERNS, probe_student, value_starts

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    item = encode_pair(processor, pairs[0], "dense-v1")
    starts = value_starts(processor.tokenizer, item, pairs[0].caption)
    assert {name for name, _ in starts} == set(ATTRIBUTE_PATTERNS)
    for name, index in starts:
        token = processor.tokenizer.decode([int(item["input_ids"][index])]).strip()
        words = [m.group(1) for m in re.finditer(ATTRIBUTE_PATTERNS[name], pairs[0].caption)]
        assert token and any(word.startswith(token) for word in words), (name, token, words)

    result = probe_student(folder, n=8)
    assert set(result.attributes) == set(ATTRIBUTE_PATTERNS)
    assert all(0 <= acc <= 1 for scores in result.attributes.values() for acc in scores.values())
    tower_in = result.positions["input"]
    if json.loads((folder / "config.json").read_text())["model_type"] == "qwen3_vl":
        assert tower_in["row"] == tower_in["col"] == 1.0  # the frozen sine-cosine table
    else:  # Qwen2.5-VL: rotary positions inside the tower, nothing added to the patch embedding
        assert tower_in["row"] < 0.6 and tower_in["col"] < 0.6
    assert result.contents and set(result.contents) <= {"shape", "size", "motion", "pattern", "camera"}
    for probe in result.contents.values():
        assert 0 <= probe["accuracy"] <= 1 and 0 <= probe["majority"] <= 1 and probe["tokens"] > 0


def test_content_probe_holds_out_whole_clips() -> None:
    """The token-contents probe scores on clips it never fitted: features that only name the clip (and a
    label fixed per clip) read perfectly when a clip's tokens fall on both sides, and not when held out
    whole; features that carry the label read perfectly either way."""
    from trainer.distill.probe import grouped_probe, ridge_accuracy

    rng = np.random.default_rng(0)
    clips = np.repeat(np.arange(40), 20)
    label = rng.integers(0, 3, 40)[clips]
    names_clip = np.eye(40)[clips] + 0.01 * rng.standard_normal((len(clips), 40))
    assert ridge_accuracy(names_clip, label) > 0.95  # tokens of one clip on both sides: it leaks
    accuracy, majority = grouped_probe(names_clip, label, clips)
    assert accuracy < 0.7 and 0 < majority < 0.7
    carries_label = np.c_[np.eye(3)[label], rng.standard_normal((len(clips), 5))]
    assert grouped_probe(carries_label, label, clips)[0] == 1.0
