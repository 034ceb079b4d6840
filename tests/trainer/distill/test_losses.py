"""The caption loss and the world's auxiliary losses: digit weights, the dense head and the grounding heads
learn what they are meant to."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trainer.distill import DistillConfig
from trainer.distill.config import GROUNDING_ATTENTION
from trainer.distill.losses import digit_weights, weighted_loss, world_loss
from trainer.distill.targets import (
    DENSE_CLASSES,
    DENSE_READINGS,
)
from trainer.distill.tokens import collate, encode_pair

pytestmark = pytest.mark.slow


def test_digit_weight_scales_only_the_digit_targets(student: tuple[Path, list]) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    tokenizer = processor.tokenizer
    batch = collate([encode_pair(processor, p, "dense-v1") for p in pairs[:2]], tokenizer.pad_token_id)
    ignore_digits = digit_weights(tokenizer, 0.0)
    digits = ignore_digits == 0
    assert {tokenizer.decode([int(i)]) for i in digits.nonzero()} == set("0123456789")
    labels = batch["labels"]
    words_only = dict(batch, labels=labels.masked_fill(digits[labels.clamp(min=0)], -100))
    with torch.no_grad():
        own = model(**batch).loss
        assert torch.isclose(weighted_loss(model, batch, digit_weights(tokenizer, 1.0)), own)
        assert torch.isclose(weighted_loss(model, batch, ignore_digits), model(**words_only).loss)


def test_the_dense_loss_teaches_the_tokens_to_say_what_they_show(student: tuple[Path, list]) -> None:
    """A few steps on the dense loss alone (the head and the model together) raise the head's accuracy
    on the visual tokens; the caption loss is the rest of the total."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    head = torch.nn.Linear(model.config.get_text_config().hidden_size, sum(DENSE_CLASSES))
    weights = digit_weights(processor.tokenizer, 1.0)
    batch = collate([encode_pair(processor, p, "dense-v1", True) for p in pairs[:4]], 0)
    config = DistillConfig(pairs="world", dense_weight=1.0)
    with torch.no_grad():
        total, caption, measured = world_loss(model, batch, weights, config, head)
        assert torch.equal(caption, weighted_loss(model, batch, weights))
    assert float(total - caption) > 0 and set(measured) == {*DENSE_READINGS, "shape"}
    before = sum(measured[k] for k in DENSE_READINGS) / len(DENSE_READINGS)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    mostly_dense = config.model_copy(update={"dense_weight": 50.0})
    for _ in range(15):
        loss, _, _ = world_loss(model, batch, weights, mostly_dense, head)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _, _, after = world_loss(model, batch, weights, config, head)
    assert sum(after[k] for k in DENSE_READINGS) / len(DENSE_READINGS) > before + 0.2


def test_the_grounding_loss_teaches_a_head_to_look_at_the_object(student: tuple[Path, list]) -> None:
    """A few steps on the grounding loss raise the attention the heads put on the described objects; the
    caption loss is the rest of the total."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=GROUNDING_ATTENTION
    )
    weights = digit_weights(processor.tokenizer, 1.0)
    batch = collate([encode_pair(processor, p, "dense-v1", True) for p in pairs[:4]], 0)
    config = DistillConfig(pairs="world", grounding_weight=1.0, grounding_layer=1)
    with torch.no_grad():
        total, caption, measured = world_loss(model, batch, weights, config)
        assert torch.equal(caption, weighted_loss(model, batch, weights))
    before = measured["attention"]
    assert float(total - caption) >= -math.log(before) - 1e-4  # the mean of -log(mass) is at least this
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    mostly_grounding = config.model_copy(update={"grounding_weight": 50.0})
    for _ in range(10):
        loss, _, _ = world_loss(model, batch, weights, mostly_grounding)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _, _, after = world_loss(model, batch, weights, config)
    assert after["attention"] > 2 * before
