"""Captioner distillation: train a small Qwen-VL student on (clip, teacher caption) pairs.

The teacher is either the synthetic world's ground truth (``world``: a perfect captioner) or
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

from dataengine.world.language import CAMERAS, MOTIONS, PATTERNS, SIZES
from trainer.distill.config import (
    _RUN_RECORDS,
    _WORLD_TARGETS,
    GROUNDING_ATTENTION,
    PRESETS,
    WORLD_SEED_OFFSET,
    DistillConfig,
)
from trainer.distill.loop import (
    DistillResult,
    _batches,
    _device,
    _init_folder,
    _Log,
    _lr,
    _pairs,
    _sincos_positions,
    _text_layers,
    _to,
    _train,
    _warm_up_tower,
    add_dense_head,
    distill,
    make_optimizer,
)
from trainer.distill.losses import _attention_mass, _dense_loss, _digit_weights, _weighted_loss, _world_loss
from trainer.distill.pairs import (
    _SHOTS_PER_VIDEO,
    Pair,
    _fit_events,
    _world_chunk,
    object_boxes,
    run_pairs,
    world_pairs,
)
from trainer.distill.plots import _loss_curve
from trainer.distill.targets import (
    DENSE_CLASSES,
    DENSE_LOGGED,
    DENSE_READINGS,
    EXTENT_BINS,
    GRID_CLASSES,
    HEADING_BINS,
    PLACE_BINS,
    WorldClasses,
    _place_bin,
    dense_targets,
    extent_bin,
    grounding_targets,
    heading_bin,
    split_dense_targets,
    world_classes,
)
from trainer.distill.tokens import (
    _PairEncoder,
    _request,
    answer_offsets,
    collate,
    encode_pair,
    encoded_batches,
    tokenizer_corpus,
)

__all__ = [
    "CAMERAS",
    "DENSE_CLASSES",
    "DENSE_LOGGED",
    "DENSE_READINGS",
    "EXTENT_BINS",
    "GRID_CLASSES",
    "GROUNDING_ATTENTION",
    "HEADING_BINS",
    "MOTIONS",
    "PATTERNS",
    "PLACE_BINS",
    "PRESETS",
    "SIZES",
    "WORLD_SEED_OFFSET",
    "_RUN_RECORDS",
    "_SHOTS_PER_VIDEO",
    "_WORLD_TARGETS",
    "DistillConfig",
    "DistillResult",
    "Pair",
    "WorldClasses",
    "_Log",
    "_PairEncoder",
    "_attention_mass",
    "_batches",
    "_dense_loss",
    "_device",
    "_digit_weights",
    "_fit_events",
    "_init_folder",
    "_loss_curve",
    "_lr",
    "_pairs",
    "_place_bin",
    "_request",
    "_sincos_positions",
    "_text_layers",
    "_to",
    "_train",
    "_warm_up_tower",
    "_weighted_loss",
    "_world_chunk",
    "_world_loss",
    "add_dense_head",
    "answer_offsets",
    "collate",
    "dense_targets",
    "distill",
    "encode_pair",
    "encoded_batches",
    "extent_bin",
    "grounding_targets",
    "heading_bin",
    "make_optimizer",
    "object_boxes",
    "run_pairs",
    "split_dense_targets",
    "tokenizer_corpus",
    "world_classes",
    "world_pairs",
]
