"""A pair as the student's tokens: only the answer is learned, and batches are encoded in a worker process in
the plan's order."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from trainer.distill.tokens import collate, encode_pair, encoded_batches

pytestmark = pytest.mark.slow


def test_only_the_answer_is_learned(student: tuple[Path, list]) -> None:
    from transformers import AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    item = encode_pair(processor, pairs[0], "dense-v1")
    learned = item["input_ids"][item["labels"] != -100]
    assert processor.tokenizer.decode(learned) == pairs[0].caption + "<|im_end|>"
    t = len(pairs[0].frames.frames_THWC)
    assert item["video_grid_thw"].tolist()[0][0] == -(-t // 2)  # frames go in pairs, an odd last one repeated


def test_encoded_batches_are_the_plan_in_order(student: tuple[Path, list]) -> None:
    """The batches a worker process encodes equal encoding each index list in the step, in the plan's order,
    and a consumer that stops early leaves no worker running."""
    import torch
    from transformers import AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    plan = [[0, 1], [2], [3, 4, 5], [1, 0]]
    batches = list(encoded_batches(processor, pairs, plan, "dense-v1", ahead=2))
    assert len(batches) == len(plan)
    for indices, batch in zip(plan, batches, strict=True):
        direct = collate(
            [encode_pair(processor, pairs[i], "dense-v1") for i in indices], processor.tokenizer.pad_token_id
        )
        assert batch.keys() == direct.keys()
        assert all(torch.equal(batch[k], direct[k]) for k in batch)
    long_plan = iter(plan * 100)
    stream = encoded_batches(processor, pairs, long_plan, "dense-v1", ahead=2)
    next(stream)
    assert len(multiprocessing.active_children()) == 1  # the encoding worker
    stream.close()  # shuts the worker down, and the plan is read no further
    assert multiprocessing.active_children() == []
    assert len(list(long_plan)) >= 400 - 4  # two ahead, and one more queued when the first was taken
