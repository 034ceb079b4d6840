"""Pairs as the student's tokens, pixels and labels, one at a time or batched."""

from __future__ import annotations

import functools
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dataengine.caption.engines.base import (
    EngineRequest,
    SamplingConfig,
    chat_messages,
    even_frames,
    video_metadata,
)
from dataengine.caption.prompts import PROMPTS, get_prompt
from dataengine.records import Frames
from trainer.distill.config import WORLD_TARGETS
from trainer.distill.pairs import Pair
from trainer.distill.targets import dense_targets, grounding_targets


def _request(frames: Frames, prompt_id: str) -> EngineRequest:
    prompt = get_prompt(prompt_id)
    t = len(frames.frames_THWC)
    text = prompt.render(duration_s=t / frames.fps, n_frames=t, fps=frames.fps)
    return EngineRequest(prompt, text, frames, None, SamplingConfig())


def encode_pair(processor: Any, pair: Pair, prompt_id: str, world_targets: bool = False) -> dict[str, Any]:
    """Tokens, pixels and labels of one pair, as the caption stage's request would be tokenized, with the
    answer appended; labels are -100 everywhere but the answer and its end-of-turn token. With
    ``world_targets`` and a world pair (it has boxes), also ``grounding`` (``grounding_targets``' queries and
    masks) and ``dense`` (``dense_targets``)."""
    request = _request(pair.frames, prompt_id)
    frames_THWC = even_frames(pair.frames)
    metadata = video_metadata(frames_THWC, pair.frames.fps)
    metadata.pop("do_sample_frames")
    kwargs: dict[str, Any] = {"video_metadata": [metadata], "do_sample_frames": False}
    messages = chat_messages(request)
    messages[-1]["content"][0]["video"] = frames_THWC
    common = {"tokenize": True, "return_dict": True, "return_tensors": "pt", "processor_kwargs": kwargs}
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, **common)
    answer = [{"role": "assistant", "content": [{"type": "text", "text": pair.caption}]}]
    full = processor.apply_chat_template(messages + answer, **common)
    ids = full["input_ids"][0]
    n_prompt = prompt["input_ids"].shape[1]
    if not (ids[:n_prompt] == prompt["input_ids"][0]).all():
        raise RuntimeError("the chat template does not extend the prompt with the answer; cannot mask it")
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    end = n_prompt + int((ids[n_prompt:] == im_end).nonzero()[0, 0]) + 1  # through the answer's <|im_end|>
    labels = ids.clone()
    labels[:n_prompt] = -100
    labels[end:] = -100
    encoded = {
        "input_ids": ids[:end],
        "labels": labels[:end],
        "pixel_values_videos": full["pixel_values_videos"],
        "video_grid_thw": full["video_grid_thw"],
    }
    if "mm_token_type_ids" in full:  # Qwen3-VL places its M-RoPE positions by them
        encoded["mm_token_type_ids"] = full["mm_token_type_ids"][0, :end]
    if world_targets and pair.boxes is not None:
        offsets = answer_offsets(processor.tokenizer, ids, n_prompt, pair.caption)
        merge = processor.video_processor.merge_size
        grid_thw = full["video_grid_thw"][0]
        encoded["grounding"] = grounding_targets(pair.caption, offsets, n_prompt, pair.boxes, grid_thw, merge)
        if pair.classes is not None:
            encoded["dense"] = dense_targets(pair.boxes, pair.classes, grid_thw, merge)
    return encoded


def answer_offsets(tokenizer: Any, ids: Any, start: int, caption: str) -> list[tuple[int, int]]:
    """The (start, end) character span in ``caption`` of each answer token, which begins at ``ids[start]``."""
    encoded = tokenizer(caption, return_offsets_mapping=True, add_special_tokens=False)
    if encoded["input_ids"] != ids[start : start + len(encoded["input_ids"])].tolist():
        raise RuntimeError("the answer does not tokenize alone as it does after the prompt; cannot place it")
    return [tuple(span) for span in encoded["offset_mapping"]]


def collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-padded batch: padding is masked out of attention and loss; ``grounding`` and ``dense`` (where
    items have them) are lists, one entry (or None) per row."""
    import torch

    length = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), -100, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, x in enumerate(items):
        n = len(x["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = x["input_ids"], x["labels"], 1
    batch: dict[str, Any] = {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "pixel_values_videos": torch.cat([x["pixel_values_videos"] for x in items]),
        "video_grid_thw": torch.cat([x["video_grid_thw"] for x in items]),
    }
    for key in WORLD_TARGETS:
        if any(key in x for x in items):
            batch[key] = [x.get(key) for x in items]
    if "mm_token_type_ids" in items[0]:
        types = torch.zeros((len(items), length), dtype=torch.long)
        for row, x in enumerate(items):
            types[row, : len(x["mm_token_type_ids"])] = x["mm_token_type_ids"]
        batch["mm_token_type_ids"] = types
    return batch


def tokenizer_corpus(captions: Sequence[str]) -> list[str]:
    """What the student's BPE is trained on: the teacher's captions, every prompt and the chat frame."""
    prompts = [text for p in PROMPTS.values() for text in (p.system, p.user)]
    chat = [f"<|im_start|>{role}\n<|im_end|>\n" for role in ("system", "user", "assistant")]
    return [*captions, *prompts, *chat, *(f"{t / 2:.1f} {t} {t / 4:.2f}" for t in range(64))]


@dataclass
class _PairEncoder:
    """Pairs as a map-style dataset of encoded items, for a ``DataLoader`` worker."""

    processor: Any
    pairs: Sequence[Pair]
    prompt_id: str
    world_targets: bool = False

    def __getitem__(self, index: int) -> dict[str, Any]:
        return encode_pair(self.processor, self.pairs[index], self.prompt_id, self.world_targets)

    def __len__(self) -> int:
        return len(self.pairs)


def encoded_batches(
    processor: Any,
    pairs: Sequence[Pair],
    plan: Iterable[list[int]],
    prompt_id: str,
    ahead: int = 2,
    world_targets: bool = False,
) -> Generator[dict[str, Any]]:
    """The collated batch of each index list in ``plan``, in order, encoded by a worker process while the
    steps before it train: the chat template and video processor are Python-heavy, and a thread would hold
    the GIL that the tiny student's many small kernels need. At most ``ahead`` batches wait encoded or
    queued; the worker is forked, so the pairs are shared, not copied."""
    from torch.utils.data import DataLoader

    loader: DataLoader[dict[str, Any]] = DataLoader(
        _PairEncoder(processor, pairs, prompt_id, world_targets),  # type: ignore[arg-type]  # map-style dataset
        batch_sampler=plan,  # any iterable of index lists
        collate_fn=functools.partial(collate, pad_id=processor.tokenizer.pad_token_id),
        num_workers=1,
        prefetch_factor=ahead,
        multiprocessing_context="fork",
    )
    yield from loader
