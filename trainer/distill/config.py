"""What to train on, which student, and for how long: the presets and ``DistillConfig``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dataengine.caption.tiny_vlm import Family, TinyVLMConfig
from dataengine.config import Config
from dataengine.stages import ViewConfig

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
RUN_RECORDS = ("distill.json", "fidelity.json")  # what a student folder says of its own run: not inherited
WORLD_TARGETS = ("grounding", "dense")  # batch entries that are targets, not model inputs


class DistillConfig(Config):
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
