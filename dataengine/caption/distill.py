"""Captioner distillation: train a small Qwen-VL student on (clip, teacher caption) pairs.

The teacher is either the synthetic world's ground truth (``world``: a perfect captioner, ``world.py``) or
any captioner whose captions a run wrote to its manifest (a run folder). Every pair goes through exactly
the path the student will be served on: the clip's frames come from the caption view of the decode stage,
the request is the caption stage's own prompt, and the processor and chat template of the student's folder
turn both into tokens; the loss is on the answer (the caption JSON and ``<|im_end|>``) only. The result is
an HF folder (safetensors, processor, chat template) that ``vllm.LLM`` and transformers both load, plus
``distill.json`` (what was trained, how long, the loss) and ``loss_curve.png``.

The student (Qwen3-VL by default, or Qwen2.5-VL) starts from random weights with a tokenizer trained on the
teacher's captions and the prompts, so its vocabulary is the domain's and sequences are short, or goes on
from a student folder (``init``). A new Qwen3-VL student's learned vision position table starts as a 2-D
sine-cosine table at the scale of the patch features (``position_init``): as built it is ~500x smaller
than them after training, and where things are never reaches the text model. ``digit_weight`` lowers the
loss weight of digit tokens, which carry most of the loss of exact-number captions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import shutil
import tempfile
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import Field, model_validator

from dataengine.caption.engines.base import (
    EngineRequest,
    SamplingConfig,
    chat_messages,
    even_frames,
    video_metadata,
)
from dataengine.caption.prompts import PROMPTS, get_prompt
from dataengine.caption.schema import StructuredCaption
from dataengine.caption.tiny_vlm import Family, TinyVLMConfig, build_tiny_vlm
from dataengine.config import ConfigError, StageConfig
from dataengine.records import Clip, Failure, Frames, Source
from dataengine.stages import DecodeConfig, DecodeStage, ProbeStage, ViewConfig
from dataengine.synth import ShotSpec, VideoSpec
from dataengine.world import (
    SHAPES,
    Motion,
    Pattern,
    SizeWord,
    camera_movement,
    motion_of,
    shot_caption,
    size_word,
)

PRESETS: dict[str, TinyVLMConfig] = {
    "tiny": TinyVLMConfig(
        hidden_size=128, intermediate_size=512, num_layers=4, num_heads=2, num_kv_heads=1,
        vision_depth=4, vision_hidden_size=128, vision_num_heads=2,
    ),
    "small": TinyVLMConfig(
        hidden_size=256, intermediate_size=1024, num_layers=6, num_heads=4, num_kv_heads=2,
        vision_depth=6, vision_hidden_size=192, vision_num_heads=3,
    ),
}  # fmt: skip
WORLD_SEED_OFFSET = 1_000  # training world clips come from seed + this; eval-captions uses other seeds
# grounding reads the text model's attention probabilities, which only eager attention returns
GROUNDING_ATTENTION = {"": "eager", "text_config": "eager", "vision_config": "sdpa"}
_RUN_RECORDS = ("distill.json", "fidelity.json")  # what a student folder says of its own run: not inherited
_WORLD_TARGETS = ("grounding", "dense")  # batch entries that are targets, not model inputs


class DistillConfig(StageConfig):
    """What to train on, which student, and for how long."""

    pairs: str = Field(description="'world' (ground truth of synthetic clips) or a run folder")
    preset: Literal["tiny", "small"] = "tiny"
    patch_size: int | None = Field(
        None,
        ge=4,
        le=32,
        multiple_of=2,
        description="a new student's vision patch side in pixels; None: the family's (16 for qwen3_vl). 8 "
        "cuts the view into four times the patches (about three times the visual tokens the text model "
        "reads, 1.7x the seconds per step); trained alone, such a tower learns shapes sooner "
        "(bench/tower_shape.py). A student trained on from init keeps its own",
    )
    family: Family = Field(
        "qwen3_vl",
        description="the student's architecture: qwen3_vl's vision tower has learned absolute positions",
    )
    init: str | None = Field(
        None,
        description="start from this student folder (its tokenizer and weights) instead of random weights",
    )
    seed: int = 0
    world_clips: int = Field(3000, ge=1, description="synthetic clips to train on (pairs=world)")
    view: ViewConfig = Field(
        default_factory=lambda: ViewConfig(fps=2, max_frames=8, resize="short_side", size=112),
        description="the caption view the student will see: the serving recipe's",
    )
    prompt_id: str = "dense-v1"
    minutes: float | None = Field(35.0, gt=0, description="training time budget (with max_steps: first)")
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    position_init: Literal["sincos", "random"] | None = Field(
        None,
        description="qwen3_vl: how the vision tower's learned absolute position table starts. sincos: a 2-D "
        "sine-cosine table at the scale of the patch features, so where things are is visible from the first "
        "step; random: as built (N(0, 0.02), far below the patch features: the student does not learn "
        "positions). Default: sincos for a new student, kept as trained with init",
    )
    position_rms: float | None = Field(
        None,
        gt=0,
        description="with position_init=sincos: the table's root-mean-square; None: the patch features' at "
        "the start (which grow tenfold in training while the table does not)",
    )
    freeze_positions: bool = Field(
        False,
        description="qwen3_vl: keep the position table as it starts (trained, the student shrinks it to a "
        "fraction of the patch features, and the tokens the text model reads lose where they are)",
    )
    digit_weight: float = Field(
        1.0,
        ge=0,
        le=1,
        description="loss weight of tokens that are digits: below 1, the exact numbers a teacher writes "
        "(pixels, speeds) pull less than the words that name what is seen",
    )
    grounding_weight: float = Field(
        0.0,
        ge=0,
        description="world pairs: weight of an auxiliary loss that makes an attention head of text layer "
        "grounding_layer look, while the caption describes an object, at the visual tokens of the first "
        "frame pair that show it (the world knows where it is): the lookup that start region, shape and "
        "size need, which the caption loss alone did not teach in 135 CPU minutes. 0: off",
    )
    grounding_layer: int = Field(1, ge=0, description="the text layer whose heads grounding trains")
    grounding_motion: bool = Field(
        True,
        description="grounding: the layer's second head looks at the object in the last frame pair (where "
        "it ends, so its motion), the first in the first pair; off: only the first head, first pair",
    )
    dense_weight: float = Field(
        0.0,
        ge=0,
        description="world pairs: weight of an auxiliary loss on the visual tokens themselves: a linear "
        "head (used in training only, not saved) reads from each merged token the shape and size word of "
        "the object on it, that object's motion, or, where no object is, the background pattern and the "
        "camera movement (the world knows them), the token's own grid row and column, and finer than the "
        "caption's words, a moving object's heading and, on its centre token, its size and centre place "
        "(DENSE_READINGS); it teaches the vision tower the features the caption needs and the caption loss "
        "alone did not. 0: off",
    )
    tower_warmup_steps: int = Field(
        0,
        ge=0,
        description="world pairs, with dense_weight: before the caption steps, this many steps that train "
        "the vision tower (and the dense head) alone on the dense loss, each a fraction of a whole step's "
        "cost: the tower learns to see shape and size first, the text model then learns to read it. Not "
        "counted in minutes or max_steps. 0: off",
    )
    tower_warmup_lr: float = Field(1e-3, gt=0, description="the tower warm-up's learning rate (constant)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None: torch's default")
    device: str = Field(
        "cpu",
        description="where the student trains: cpu, or a torch device such as cuda or cuda:1 (float32 "
        "either way; the pairs are made and encoded on the CPU, batches moved to the device)",
    )
    log_every: int = Field(25, ge=1)
    workers: int = Field(2, ge=1, description="processes that write and decode the world clips")
    save_dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16", description="weights as saved (half the size; loaders cast to their compute dtype)"
    )

    @property
    def world_targets(self) -> bool:
        """Whether training reads the world's targets (grounding and dense) beside the captions."""
        return self.grounding_weight > 0 or self.dense_weight > 0

    @model_validator(mode="after")
    def _check_warmup(self) -> DistillConfig:
        if self.tower_warmup_steps and not self.dense_weight:
            raise ValueError("tower_warmup_steps trains on the dense loss: set dense_weight > 0 too")
        return self


@dataclass
class Pair:
    frames: Frames
    caption: str  # the teacher's structured caption as compact JSON
    # world pairs: each subject's on-screen bounding box (x0, y0, x1, y1, fractions of the frame) at each
    # frame, (subjects, frames, 4) in caption order; None where the teacher does not say where things are
    boxes: np.ndarray | None = None
    classes: WorldClasses | None = None  # world pairs: what each subject and the scene are


@dataclass(frozen=True)
class WorldClasses:
    """What a world shot's subjects and scene are: the class ids the dense loss reads from visual tokens."""

    # (subjects, 4) in caption order: shape x size word (SHAPES x SIZES), motion, heading (-100 if still),
    # extent (EXTENT_BINS)
    subjects: np.ndarray
    scene: int  # pattern x camera movement (PATTERNS x CAMERAS)


SIZES: tuple[SizeWord, ...] = get_args(SizeWord)
MOTIONS: tuple[Motion, ...] = get_args(Motion)
PATTERNS: tuple[Pattern, ...] = get_args(Pattern)
CAMERAS = ("static", "pan left", "pan right", "tilt up", "tilt down")  # what camera_movement returns
# the dense head's readings: what is on a token (nothing, or shape x size), its motion, the scene, on the
# token holding an object's centre, that object's shape x size, the token's own grid row and column, and
# three finer than the caption's words, so that the tokens tell neighbouring words apart near their edges:
# a moving object's heading, and on its centre token, its size and where in the frame its centre lies
DENSE_READINGS = ("object", "motion", "scene", "centre", "row", "column", "heading", "extent", "x", "y")
DENSE_LOGGED = (*DENSE_READINGS, "shape")  # shape: the centre reading's shape, right whatever the size
GRID_CLASSES = 32  # the most merged-token rows (or columns) a frame may have for the row and column readings
HEADING_BINS = 32  # 11.25-degree bins, four to each of the eight direction words' sectors
EXTENT_BINS = 32  # size / min(width, height) in hundredths (the size words' edges are 0.17 and 0.23), capped
PLACE_BINS = 48  # the centre's x (y) in 48ths of the frame, sixteen to each third (the start regions')
DENSE_CLASSES = (
    1 + len(SHAPES) * len(SIZES), len(MOTIONS), len(PATTERNS) * len(CAMERAS), len(SHAPES) * len(SIZES),
    GRID_CLASSES, GRID_CLASSES, HEADING_BINS, EXTENT_BINS, PLACE_BINS, PLACE_BINS,
)  # fmt: skip


def heading_bin(vx: float, vy: float) -> int:
    """The ``HEADING_BINS`` bin of an on-screen velocity's direction (y down), or -100 where ``motion_of``
    says still. The bins split each of ``motion_of``'s 45-degree sectors in four, counterclockwise from the
    start of the "right" sector, so a bin's sector is ``OCTANTS[bin // 4]``:
    the reading asks the tokens where in its sector a direction lies, which is what tells neighbouring
    words apart near a sector's edge."""
    if motion_of(vx, vy) == "still":
        return -100
    turns = (math.atan2(-vy, vx) / (2 * math.pi) + 1 / 16) % 1.0
    return int(turns * HEADING_BINS) % HEADING_BINS


def extent_bin(size_px: float, width: int, height: int) -> int:
    """An object's size in hundredths of the frame's shorter side, capped at ``EXTENT_BINS`` - 1: the size
    words (``size_word``) change at whole hundredths, so each word is a run of bins."""
    return min(EXTENT_BINS - 1, int(size_px / min(width, height) * 100 + 1e-9))


def world_classes(shot: ShotSpec, width: int, height: int) -> WorldClasses:
    subjects = []
    for obj in shot.objects:
        on_screen = (obj.velocity_xy[0] - shot.pan_xy[0], obj.velocity_xy[1] - shot.pan_xy[1])
        subjects.append((
            SHAPES.index(obj.shape) * len(SIZES) + SIZES.index(size_word(obj.size_px, width, height)),
            MOTIONS.index(motion_of(*on_screen)),
            heading_bin(*on_screen),
            extent_bin(obj.size_px, width, height),
        ))  # fmt: skip
    camera = CAMERAS.index(camera_movement(*shot.pan_xy))
    return WorldClasses(
        np.array(subjects, dtype=np.int64), PATTERNS.index(shot.pattern) * len(CAMERAS) + camera
    )


# ----------------------------------------------------------------------------------------------------------
# Pairs


def world_pairs(n: int, seed: int, view: ViewConfig, work_dir: Path, workers: int = 1) -> list[Pair]:
    """``n`` single-shot world clips, decoded through the caption view, each with the ground-truth caption
    of its shot, made by ``workers`` processes.

    The shots are written back to back into videos of ``_SHOTS_PER_VIDEO`` shots (hard cuts between them)
    and each shot is decoded as one clip, all clips of a video in one decode pass: four processes per
    fifty clips instead of four per clip. Videos are written at 8 fps: the caption view samples 2 fps, so
    it sees the same frames as at 24 fps, for a third of the encoding work.
    """
    from dataengine.synth import random_spec

    rng = np.random.default_rng(seed + WORLD_SEED_OFFSET)
    shots = [random_spec(rng, fps=8, max_shots=1, duration_range=(2.0, 4.0)) for _ in range(n)]
    jobs = [
        (shots[i : i + _SHOTS_PER_VIDEO], view, work_dir / f"world_{i:05d}.mp4")
        for i in range(0, n, _SHOTS_PER_VIDEO)
    ]
    if workers <= 1:
        chunks = [_world_chunk(*job) for job in jobs]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            chunks = list(pool.map(_world_chunk, *zip(*jobs, strict=True)))
    return [pair for chunk in chunks for pair in chunk]


_SHOTS_PER_VIDEO = 50


def _world_chunk(specs: Sequence[VideoSpec], view: ViewConfig, path: Path) -> list[Pair]:
    from dataengine.synth import write_video

    first = specs[0]
    joined = first.model_copy(update={"shots": [spec.shots[0] for spec in specs]})
    write_video(joined, path)
    try:
        video = ProbeStage().probe(Source.from_uri(str(path)))
        if isinstance(video, Failure):
            raise RuntimeError(f"probing {path}: {video.reason}")
        clips = [
            Clip.of(video, index=i, start_s=start, end_s=end, shot=i)
            for i, (start, end) in enumerate(joined.shot_times)
        ]
        decoded = DecodeStage(DecodeConfig(views={"caption": view})).process_batch(clips)
    finally:
        path.unlink()
        path.with_suffix(".json").unlink()
    pairs = []
    for shot, (start_s, _), result in zip(joined.shots, joined.shot_times, decoded, strict=True):
        if isinstance(result, Failure):
            raise RuntimeError(f"decoding {path}: {result.reason}")
        frames = result.views["caption"]
        caption = shot_caption(shot, joined.width, joined.height)
        boxes = object_boxes(shot, frames.timestamps_s - start_s, joined.width, joined.height)
        classes = world_classes(shot, joined.width, joined.height)
        pairs.append(Pair(frames, _fit_events(caption, frames).model_dump_json(), boxes, classes))
    return pairs


def object_boxes(shot: ShotSpec, taus: np.ndarray, width: int, height: int) -> np.ndarray:
    """(objects, frames, 4): each object's on-screen bounding box (x0, y0, x1, y1) as fractions of the frame,
    clipped to it, ``taus`` seconds after the shot starts; objects in ``shot`` (and caption) order."""
    boxes = np.empty((len(shot.objects), len(taus), 4))
    for i, obj in enumerate(shot.objects):
        x = obj.start_xy[0] + (obj.velocity_xy[0] - shot.pan_xy[0]) * taus
        y = obj.start_xy[1] + (obj.velocity_xy[1] - shot.pan_xy[1]) * taus
        half = obj.size_px / 2
        boxes[i] = np.stack([x - half, y - half, x + half, y + half], 1) / [width, height, width, height]
    return boxes.clip(0.0, 1.0)


def run_pairs(run_dir: Path, view: ViewConfig | None = None) -> list[Pair]:
    """The clips a run wrote to its shards with the structured captions its captioner made, decoded again
    from their sources through the run's caption view (or ``view``)."""
    import webdataset as wds

    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise ConfigError(
            f"{run_dir} is not a run folder (no run.json); pass a `dataengine run --out` folder"
        )
    recipe = json.loads(run_json.read_text())["config"]
    if view is None:
        view = ViewConfig.model_validate(recipe["decode"]["views"][recipe["caption"]["view"]])
    stage = DecodeStage(DecodeConfig(views={"caption": view}))
    shards = sorted(str(p) for p in (run_dir / "shards").glob("*.tar"))
    prober, pairs = ProbeStage(), []
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode():
        meta = sample["json"]
        if not meta.get("structured"):
            continue
        video = prober.probe(Source.from_uri(meta["source"]))
        if isinstance(video, Failure):
            continue
        clip = Clip.of(video, index=0, start_s=meta["start_s"], end_s=meta["end_s"])
        decoded = stage.decode(clip)
        if isinstance(decoded, Failure):
            continue
        frames = decoded.views["caption"]
        caption = StructuredCaption.model_validate(meta["structured"])
        pairs.append(Pair(frames, _fit_events(caption, frames).model_dump_json()))
    if not pairs:
        raise ConfigError(f"{run_dir} has no captioned clips to learn from")
    return pairs


def _fit_events(caption: StructuredCaption, frames: Frames) -> StructuredCaption:
    """Event times clipped to the span the prompt announces (frames / fps), as guided decoding bounds them."""
    limit = math.ceil(len(frames.frames_THWC) / frames.fps * 10) / 10
    events = [
        e.model_copy(update={"start_s": min(e.start_s, limit), "end_s": min(e.end_s, limit)})
        for e in caption.events
    ]
    return caption.model_copy(update={"events": events})


# ----------------------------------------------------------------------------------------------------------
# Tokens


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


def grounding_targets(
    caption: str,
    offsets: Sequence[tuple[int, int]],
    answer_start: int,
    boxes: np.ndarray,
    grid_thw: Any,
    merge: int,
) -> tuple[Any, Any]:
    """Where the answer describes each subject, and which visual tokens of the first and of the last frame
    pair show it (where it starts and where it ends).

    Returns ``(queries, targets)``: the sequence positions whose next token lies in a subject's JSON object
    (Q,), and for each two masks (Q, 2, rows x cols) over the merged tokens of the first and of the last
    frame pair, row-major, true where the subject's box in either frame of the pair overlaps the token's cell.
    """
    import torch

    starts = [m.start() for m in re.finditer(r'\{"kind":', caption)]
    if len(starts) != len(boxes):
        raise RuntimeError(f"the caption names {len(starts)} subjects and the world {len(boxes)}")
    ends = [*starts[1:], caption.index("}]", starts[-1]) + 1]
    frame_pairs, rows, cols = (int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge)
    r, c = np.indices((rows, cols))

    def cells(frame_boxes: np.ndarray) -> np.ndarray:
        mask = np.zeros((rows, cols), dtype=bool)
        for x0, y0, x1, y1 in frame_boxes:
            mask |= (x0 < (c + 1) / cols) & (x1 > c / cols) & (y0 < (r + 1) / rows) & (y1 > r / rows)
        return mask.ravel()

    last = 2 * (frame_pairs - 1)  # an odd last frame is repeated in its pair: its box alone
    queries, targets = [], []
    for subject, (a, b) in enumerate(zip(starts, ends, strict=True)):
        both = np.stack([cells(boxes[subject, :2]), cells(boxes[subject, last : last + 2])])
        for j, (char, _) in enumerate(offsets):
            if a <= char < b:
                queries.append(answer_start + j - 1)
                targets.append(both)
    return torch.tensor(queries, dtype=torch.long), torch.from_numpy(np.array(targets))


def dense_targets(boxes: np.ndarray, classes: WorldClasses, grid_thw: Any, merge: int) -> Any:
    """What each merged visual token shows, as (frame pairs x rows x cols, 10) class ids in the visual
    tokens' order, one column per ``DENSE_READINGS`` entry, -100 where a reading does not apply.

    A token is an object's when that object (its box averaged over the pair's two frames) covers a tenth
    of the token's cell or its centre lies in the cell; where objects compete, the one covering more (then
    the one drawn later, on top). ``object``: the object's shape x size word + 1, or 0 on a token no object
    touches; ``motion``: the object's motion; ``scene``: on a token no object touches, the scene's pattern x
    camera. A token an object touches but does not cover is left out of these three. ``centre``: on the
    token holding an object's centre, its shape x size word (where centres share a token, the object drawn
    later): the one token that sees the whole object, where most of an object's tokens see an edge of it.
    ``row`` and ``column``: the token's own grid place, on every token, so that the tokens keep their place
    in the frame for the text model to read (the content readings alone are the same wherever an object
    is, and training on them wears the position table's trace out of the tower's output: ``dataengine
    probe-student``). ``heading``: on a moving object's tokens (as ``motion``), its ``heading_bin``.
    ``extent``, ``x``, ``y``: on the centre token (as ``centre``), the object's ``extent_bin`` and its
    centre's place in ``PLACE_BINS`` of the frame.
    """
    import torch

    frame_pairs, rows, cols = (int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge)
    if max(rows, cols) > GRID_CLASSES:
        raise ConfigError(
            f"a {rows} x {cols} merged-token grid exceeds the dense head's {GRID_CLASSES} rows/columns: "
            "caption smaller frames or a larger patch_size"
        )
    r, c = np.indices((rows, cols))
    targets = np.full((frame_pairs, rows, cols, len(DENSE_READINGS)), -100, dtype=np.int64)
    read = {name: targets[..., k] for k, name in enumerate(DENSE_READINGS)}  # views into targets
    read["row"][...], read["column"][...] = r, c
    shape_size, motion, heading, extent = classes.subjects.T  # per subject, in caption order
    for p in range(frame_pairs):
        x0, y0, x1, y1 = boxes[:, 2 * p : 2 * p + 2].mean(axis=1).T[:, :, None, None]  # (subjects, 1, 1)
        overlap = (np.minimum(x1 * cols, c + 1) - np.maximum(x0 * cols, c)).clip(0) * (
            np.minimum(y1 * rows, r + 1) - np.maximum(y0 * rows, r)
        ).clip(0)  # (subjects, rows, cols): the fraction of each cell the box covers
        centre = (np.floor((x0 + x1) / 2 * cols) == c) & (np.floor((y0 + y1) / 2 * rows) == r)
        covers = (overlap >= 0.1) | centre
        ranked = np.where(covers, overlap + 1e-6 * np.arange(len(boxes))[:, None, None], -1.0)
        top = ranked.argmax(axis=0)
        on, touched = covers.any(axis=0), (overlap > 0).any(axis=0)
        read["object"][p, on] = 1 + shape_size[top[on]]
        read["motion"][p, on] = motion[top[on]]
        read["heading"][p, on] = heading[top[on]]
        read["object"][p, ~touched] = 0
        read["scene"][p, ~touched] = classes.scene
        for subject, at in enumerate(centre):
            read["centre"][p, at] = shape_size[subject]
            read["extent"][p, at] = extent[subject]
            read["x"][p, at] = _place_bin((x0[subject] + x1[subject]).item() / 2)
            read["y"][p, at] = _place_bin((y0[subject] + y1[subject]).item() / 2)
    return torch.from_numpy(targets.reshape(-1, len(DENSE_READINGS)))


def _place_bin(fraction: float) -> int:
    return min(PLACE_BINS - 1, max(0, int(fraction * PLACE_BINS)))


def split_dense_targets(targets: np.ndarray) -> dict[str, np.ndarray]:
    """``dense_targets``'s (tokens, 10) class ids (its object, motion and scene readings) undone into the
    world's own readings, per token a class id (-1 where the reading does not apply): the shape and size
    word of the object covering it (``SHAPES``, ``SIZES``), its motion (``MOTIONS``), and on empty tokens
    the scene's pattern and camera movement."""
    what, motion, scene = (targets[:, DENSE_READINGS.index(name)] for name in ("object", "motion", "scene"))
    on, empty = what > 0, scene >= 0
    return {
        "shape": np.where(on, (what - 1) // len(SIZES), -1),
        "size": np.where(on, (what - 1) % len(SIZES), -1),
        "motion": np.where(motion >= 0, motion, -1),
        "pattern": np.where(empty, scene // len(CAMERAS), -1),
        "camera": np.where(empty, scene % len(CAMERAS), -1),
    }


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
    for key in _WORLD_TARGETS:
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


# ----------------------------------------------------------------------------------------------------------
# Training


@dataclass
class DistillResult:
    out: Path
    steps: int
    seconds: float
    final_loss: float
    pairs: int


def distill(config: DistillConfig, out: Path, pairs: Sequence[Pair] | None = None) -> DistillResult:
    """Build the student, train it on the pairs, save it to ``out`` (which must not exist or be empty;
    checked first: ``OutputExistsError``).

    Args:
        config: what to train.
        out: the student's HF folder; written in a temporary sibling and renamed when complete.
        pairs: the pairs to use; default from ``config.pairs``.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dataengine.model_cache import build_folder, require_empty

    require_empty(out)  # before the pairs and the training, not after
    device = _device(config.device)  # likewise
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    init_dir = _init_folder(config) if config.init is not None else None  # checked before any work
    if init_dir is not None and config.patch_size is not None:
        raise ConfigError(f"patch_size={config.patch_size}: a student trained on from init keeps its own")
    layers = _text_layers(config, init_dir)
    if config.grounding_weight and not config.grounding_layer < layers:
        raise ConfigError(f"grounding_layer={config.grounding_layer}: the student has {layers} layers")
    with tempfile.TemporaryDirectory(prefix="distill-") as tmp:
        if pairs is None:
            pairs = _pairs(config, Path(tmp))
        prepared_s = time.perf_counter() - started
        if init_dir is not None:
            student_dir = init_dir
        else:
            size = PRESETS[config.preset].model_copy(
                update={"seed": config.seed, "family": config.family, "vision_patch_size": config.patch_size}
            )
            corpus = tokenizer_corpus([p.caption for p in pairs])
            student_dir = build_tiny_vlm(Path(tmp) / "student", size, corpus=corpus)
        processor = AutoProcessor.from_pretrained(student_dir)
        torch.manual_seed(config.seed)
        attention = GROUNDING_ATTENTION if config.grounding_weight else None
        if attention:  # the vision tower stays sdpa on purpose: only the text model's attention is read
            logging.getLogger("transformers.integrations.sdpa_attention").setLevel(logging.ERROR)
        model = AutoModelForImageTextToText.from_pretrained(
            student_dir, dtype=torch.float32, attn_implementation=attention
        )
        if config.position_init == "sincos" or (config.position_init is None and config.init is None):
            _sincos_positions(model, encode_pair(processor, pairs[0], config.prompt_id), config.position_rms)
        table = getattr(model.model.visual, "pos_embed", None)
        if config.freeze_positions and table is not None:
            table.weight.requires_grad_(False)
        model.to(device).train()
        log = _train(config, model, processor, pairs, started)

        def write(folder: Path) -> None:
            for item in student_dir.iterdir():  # processor, tokenizer, chat template, generation config
                if item.is_file() and item.suffix in (".json", ".jinja") and item.name not in _RUN_RECORDS:
                    shutil.copy2(item, folder / item.name)
            model.eval()
            model.cpu()  # from the training device, if another
            model.to(getattr(torch, config.save_dtype)).save_pretrained(folder)
            summary = {
                "config": config.model_dump(mode="json"), "pairs": len(pairs), "steps": log.steps,
                "prepare_s": round(prepared_s, 1), "train_s": round(log.seconds, 1),
                "final_loss": log.recent_loss(), "losses": log.losses,
            }  # fmt: skip
            if log.grounding:
                summary["grounding"] = log.grounding
            if log.dense:
                summary["dense"] = log.dense
            if log.tower_warmup:
                summary["tower_warmup"] = log.tower_warmup
            (folder / "distill.json").write_text(json.dumps(summary, indent=1) + "\n")
            _loss_curve(log.losses, folder / "loss_curve.png")

        build_folder(out, write)
    return DistillResult(out, log.steps, time.perf_counter() - started, log.recent_loss(), len(pairs))


def _device(name: str) -> Any:
    """``name`` as a torch device the student can train on here, or a ``ConfigError`` that says why not."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name!r} is not a torch device (cpu, cuda, cuda:1, ...): {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: torch sees no CUDA GPU on this machine; use device=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def _to(value: Any, device: Any) -> Any:
    """``value`` (a batch: tensors, and lists or tuples of them or None) with every tensor on ``device``."""
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value.to(device, non_blocking=True) if hasattr(value, "to") else value


def _text_layers(config: DistillConfig, init_dir: Path | None) -> int:
    """How many text layers the student has: its init folder's, or its preset's."""
    if init_dir is None:
        return PRESETS[config.preset].num_layers
    saved = json.loads((init_dir / "config.json").read_text())
    return int(saved.get("text_config", saved).get("num_hidden_layers", saved.get("num_hidden_layers")))


def _init_folder(config: DistillConfig) -> Path:
    folder = Path(str(config.init))
    config_json = folder / "config.json"
    if not config_json.is_file():
        raise ConfigError(f"init={folder} is not a model folder (no config.json)")
    family = json.loads(config_json.read_text()).get("model_type")
    if family != config.family:
        raise ConfigError(f"init={folder} is a {family} student: pass --family {family} to go on training it")
    return folder


def _pairs(config: DistillConfig, work_dir: Path) -> list[Pair]:
    if config.pairs == "world":
        return world_pairs(config.world_clips, config.seed, config.view, work_dir, config.workers)
    return run_pairs(Path(config.pairs), config.view)


@dataclass
class _Log:
    steps: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    grounding: list[tuple[int, float]] = field(default_factory=list)  # attention mass on the object
    dense: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # the dense head's accuracies
    tower_warmup: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # its accuracies then

    def recent_loss(self) -> float:
        tail = [loss for _, loss in self.losses[-5:]]
        return round(float(np.mean(tail)), 4) if tail else math.nan


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


def _batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size].tolist()
        if n < batch_size:
            yield rng.choice(n, batch_size).tolist()


def make_optimizer(model: Any, config: DistillConfig) -> Any:
    """AdamW with weight decay on the matrices (the vision patch embedding's convolution among them) but not
    on token and position tables, norms or biases."""
    import torch

    def decayed(name: str, param: Any) -> bool:
        return param.ndim >= 2 and ("embed" not in name or "patch_embed" in name)

    params = list(model.named_parameters())
    decay = [p for n, p in params if decayed(n, p)]
    rest = [p for n, p in params if not decayed(n, p)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98),
    )  # fmt: skip


def add_dense_head(model: Any, optimizer: Any, config: DistillConfig) -> Any:
    """With ``dense_weight``, the dense head (``_world_loss``), its parameters added to ``optimizer``:
    trained beside the student, never saved, it only shapes the vision tower. Otherwise None."""
    import torch

    if not config.dense_weight:
        return None
    head = torch.nn.Linear(model.config.get_text_config().hidden_size, sum(DENSE_CLASSES))
    head.to(next(model.parameters()).device)
    optimizer.add_param_group({"params": list(head.parameters()), "weight_decay": 0.0})
    return head


def _train(config: DistillConfig, model: Any, processor: Any, pairs: Sequence[Pair], started: float) -> _Log:
    import torch
    from rich.progress import Progress

    device = next(model.parameters()).device
    digit_weights = _digit_weights(processor.tokenizer, config.digit_weight).to(device)
    optimizer = make_optimizer(model, config)
    dense_head = add_dense_head(model, optimizer, config)
    log = _Log()
    if config.tower_warmup_steps:
        _warm_up_tower(config, model, processor, pairs, optimizer, dense_head, log)
    budget_s = config.minutes * 60 if config.minutes else math.inf
    max_steps = config.max_steps or 10**9
    # The schedule is laid out over the expected number of steps, re-estimated as steps are timed.
    expected = float(max_steps if not math.isfinite(budget_s) else min(max_steps, 10**6))
    t0 = time.perf_counter()
    window: list[float] = []
    plan = _batches(len(pairs), config.batch_size, config.seed)
    world = config.world_targets
    batches = encoded_batches(processor, pairs, plan, config.prompt_id, world_targets=world)
    measured: dict[str, list[float]] = {key: [] for key in ("attention", *DENSE_LOGGED)}
    with Progress(transient=True) as progress, contextlib.closing(batches):
        task = progress.add_task("distill", total=None if math.isinf(budget_s) else budget_s)
        for step, cpu_batch in enumerate(batches, start=1):
            batch = _to(cpu_batch, device)
            elapsed = time.perf_counter() - t0
            if step > max_steps or elapsed >= budget_s:
                break
            if math.isfinite(budget_s) and step > 10:
                expected = min(max_steps, step * budget_s / elapsed)
            lr = _lr(config, step, expected)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if world:
                loss, caption_loss, step_measured = _world_loss(
                    model, batch, digit_weights, config, dense_head
                )
                for key, value in step_measured.items():
                    measured[key].append(value)
            else:
                loss = caption_loss = _weighted_loss(model, batch, digit_weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window.append(caption_loss.item())  # the log and its curve are the caption loss
            log.steps = step
            if step % config.log_every == 0:
                log.losses.append((step, round(float(np.mean(window)), 4)))
                window.clear()
                per_step = (time.perf_counter() - t0) / step
                looks = ""
                if measured["attention"]:
                    log.grounding.append((step, round(float(np.mean(measured["attention"])), 4)))
                    looks += f"  attention on the object {log.grounding[-1][1]:.3f}"
                if read := {k: round(float(np.mean(measured[k])), 4) for k in DENSE_LOGGED if measured[k]}:
                    log.dense.append((step, read))
                    looks += "  tokens read right " + " ".join(f"{k} {v:.2f}" for k, v in read.items())
                for values in measured.values():
                    values.clear()
                progress.console.print(
                    f"step {step}  loss {log.losses[-1][1]:.4f}{looks}  lr {lr:.2e}  {per_step:.2f} s/step  "
                    f"{time.perf_counter() - started:.0f} s"
                )
            progress.update(task, completed=min(time.perf_counter() - t0, budget_s))
    if window:  # the steps since the last log line
        log.losses.append((log.steps, round(float(np.mean(window)), 4)))
    log.seconds = time.perf_counter() - t0
    return log


def _warm_up_tower(
    config: DistillConfig,
    model: Any,
    processor: Any,
    pairs: Sequence[Pair],
    optimizer: Any,
    dense_head: Any,
    log: _Log,
) -> None:
    """``tower_warmup_steps`` steps of the dense loss on the vision tower's merged tokens alone (the text
    model neither runs nor changes), at ``tower_warmup_lr``; the readings' accuracies go to ``log``."""
    import torch
    from rich.progress import Progress

    if any(pair.classes is None for pair in pairs):
        raise ConfigError("tower_warmup_steps reads the world's dense targets: it needs --pairs world")
    device = next(model.parameters()).device
    visual = model.model.visual
    tower = [p for p in visual.parameters() if p.requires_grad] + list(dense_head.parameters())
    for group in optimizer.param_groups:
        group["lr"] = config.tower_warmup_lr
    plan = _batches(len(pairs), config.batch_size, config.seed + 1)
    batches = encoded_batches(processor, pairs, plan, config.prompt_id, world_targets=True)
    measured: dict[str, list[float]] = {key: [] for key in DENSE_LOGGED}
    t0 = time.perf_counter()
    with Progress(transient=True) as progress, contextlib.closing(batches):
        task = progress.add_task("tower warm-up", total=config.tower_warmup_steps)
        for step, cpu_batch in enumerate(batches, start=1):
            if step > config.tower_warmup_steps:
                break
            batch = _to(cpu_batch, device)
            out = visual(batch["pixel_values_videos"], grid_thw=batch["video_grid_thw"])
            tokens = getattr(out, "pooler_output", out)  # Qwen2.5-VL's tower returns the merged tokens
            loss, read = _dense_loss(dense_head, tokens, torch.cat(batch["dense"]))
            if loss is not None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(tower, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in read.items():
                measured[key].append(value)
            if step % config.log_every == 0 or step == config.tower_warmup_steps:
                read_now = {k: round(float(np.mean(v)), 4) for k, v in measured.items() if v}
                log.tower_warmup.append((step, read_now))
                for values in measured.values():
                    values.clear()
                progress.console.print(
                    f"tower warm-up step {step}  tokens read right "
                    + " ".join(f"{k} {v:.2f}" for k, v in read_now.items())
                    + f"  {(time.perf_counter() - t0) / step:.2f} s/step"
                )
            progress.update(task, completed=step)


def _sincos_positions(model: Any, example: dict[str, Any], rms: float | None = None) -> None:
    """Set a Qwen3-VL vision tower's position table (a ``side x side`` grid the tower interpolates to each
    frame's patch grid) to a 2-D sine-cosine table, half the channels for rows and half for columns, with
    root-mean-square ``rms``, by default that of the patch embeddings of ``example``'s frames. No-op for other
    families."""
    import torch

    visual = model.model.visual
    table = getattr(visual, "pos_embed", None)
    if table is None:
        return
    n, dim = table.weight.shape
    side = math.isqrt(n)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    quarter = dim // 4
    freqs = side ** (-torch.arange(quarter) / quarter)  # wavelengths from 2 pi cells to ~side x 2 pi

    def encode(pos: Any) -> Any:
        angles = pos.float()[..., None] * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    sincos = torch.cat([encode(rows), encode(cols)], dim=-1).reshape(n, -1)
    sincos = torch.nn.functional.pad(sincos, (0, dim - sincos.shape[1]))
    with torch.no_grad():
        scale = rms or visual.patch_embed(example["pixel_values_videos"]).pow(2).mean().sqrt()
        table.weight.copy_(sincos * scale / sincos.pow(2).mean().sqrt())


def _digit_weights(tokenizer: Any, digit_weight: float) -> Any:
    """Per vocabulary id: ``digit_weight`` for tokens that decode to digits only, 1 for the rest."""
    import torch

    weights = torch.ones(len(tokenizer))
    for token_id in range(len(tokenizer)):
        if tokenizer.decode([token_id]).strip().isdigit():
            weights[token_id] = digit_weight
    return weights


def _weighted_loss(model: Any, batch: dict[str, Any], weights: Any, outputs: Any = None) -> Any:
    """Next-token cross-entropy over the labelled tokens, each weighted by its target's weight (of
    ``outputs``, the model's on ``batch``, when given)."""
    import torch

    if outputs is None:
        outputs = model(**{k: v for k, v in batch.items() if k not in ("labels", *_WORLD_TARGETS)})
    logits = outputs.logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    labelled = targets != -100
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(targets)
    w = weights[targets.clamp(min=0)] * labelled
    return (losses * w).sum() / w.sum().clamp(min=1e-6)


def _world_loss(
    model: Any, batch: dict[str, Any], weights: Any, config: DistillConfig, dense_head: Any = None
) -> tuple[Any, Any, dict[str, float]]:
    """The caption loss plus the world's auxiliary losses that ``config`` weights, and, for the log, the
    caption loss alone and what the auxiliaries measure.

    Grounding: ``grounding_weight`` x the mean over grounded queries of -log(the attention probability that
    head 0 of text layer ``grounding_layer`` puts on the described object's visual tokens in the first
    frame pair, and head 1 on those of the last pair); logged as that probability's mean, ``attention``.
    Dense: ``dense_weight`` x the mean of ``dense_head``'s cross-entropies (one per reading) on the visual
    tokens as they enter the text model (``dense_targets``); logged as each reading's accuracy
    (``DENSE_LOGGED``).
    """
    import torch

    grounding = config.grounding_weight > 0
    inputs = {k: v for k, v in batch.items() if k not in ("labels", *_WORLD_TARGETS)}
    outputs = model(**inputs, output_attentions=grounding, output_hidden_states=dense_head is not None)
    caption = _weighted_loss(model, batch, weights, outputs)
    loss, measured = caption, {}
    video = model.config.video_token_id
    visual = [(batch["input_ids"][row] == video).nonzero()[:, 0] for row in range(len(batch["input_ids"]))]
    if grounding and (mass := _attention_mass(outputs, batch, visual, config)) is not None:
        loss = loss + config.grounding_weight * -torch.log(mass + 1e-6).mean()
        measured["attention"] = float(mass.detach().mean())
    if dense_head is not None and batch.get("dense"):
        rows = [row for row, targets in enumerate(batch["dense"]) if targets is not None]
        tokens = torch.cat([outputs.hidden_states[0][row, visual[row]] for row in rows])
        dense, read = _dense_loss(dense_head, tokens, torch.cat([batch["dense"][row] for row in rows]))
        measured |= read
        if dense is not None:
            loss = loss + config.dense_weight * dense
    return loss, caption.detach(), measured


def _dense_loss(dense_head: Any, tokens: Any, targets: Any) -> tuple[Any, dict[str, float]]:
    """The mean of ``dense_head``'s cross-entropies on ``tokens`` (N, hidden) against ``dense_targets``'s
    (N, 10) class ids (None when no reading applies), and each reading's accuracy (``DENSE_LOGGED``)."""
    import torch

    losses, measured = [], {}
    for k, logits in enumerate(dense_head(tokens).split(DENSE_CLASSES, dim=-1)):
        read = targets[:, k] != -100
        if read.any():
            losses.append(torch.nn.functional.cross_entropy(logits[read], targets[read, k]))
            guess = logits[read].argmax(-1)
            measured[DENSE_READINGS[k]] = float((guess == targets[read, k]).float().mean())
        if DENSE_READINGS[k] == "centre" and read.any():  # shape x size: the shape right, any size word
            measured["shape"] = float((guess // len(SIZES) == targets[read, k] // len(SIZES)).float().mean())
    return (torch.stack(losses).mean() if losses else None), measured


def _attention_mass(outputs: Any, batch: dict[str, Any], visual: list[Any], config: DistillConfig) -> Any:
    """Per grounded query and head, the attention probability on the described object's tokens (None
    when the batch has no grounded query)."""
    import torch

    attention = outputs.attentions[config.grounding_layer]  # (batch, head, query, key)
    heads = min(attention.shape[1], 2 if config.grounding_motion else 1)
    masses = []
    for row, grounding in enumerate(batch.get("grounding") or []):
        if grounding is None:
            continue
        queries, targets = grounding
        n = targets.shape[-1]  # tokens per frame pair
        for head, keys in enumerate((visual[row][:n], visual[row][-n:])[:heads]):
            masses.append((attention[row, head][queries][:, keys] * targets[:, head]).sum(-1))
    return torch.cat(masses) if masses else None


def _lr(config: DistillConfig, step: int, expected_steps: float) -> float:
    if step <= config.warmup_steps:
        return config.lr * step / max(1, config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / max(1.0, expected_steps - config.warmup_steps))
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _loss_curve(losses: Sequence[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        steps, values = zip(*losses, strict=True)
        ax.plot(steps, values)
    ax.set_xlabel("step")
    ax.set_ylabel("caption token loss")
    ax.set_yscale("log")
    ax.set_title("student distillation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
