"""The caption stage's plan: the Qwen-VL token arithmetic by hand, the context budget's refusal before
anything is built, the demo recipe measured end to end, and the GPU recipe's 7B at its published size."""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dataengine.caption.engines import (
    EngineConfig,
    OpenAIEngineConfig,
    TransformersEngineConfig,
    VLLMEngineConfig,
)
from dataengine.caption.models import resolve_model
from dataengine.config import apply_overrides
from dataengine.plan import BudgetError, StagePlan
from pipelines.plan import plan_caption
from pipelines.plan.caption import caption_budget
from pipelines.plan.qwen_vl import PUBLISHED, smart_resize, video_tokens
from pipelines.recipes import RecipeConfig, get_recipe

ROOT = Path(__file__).resolve().parents[2]
# The issue's example: 64 frames of 448 px against an 8192-token context. The recipe's clips are at most
# 10 s at 2 fps (20 frames), so its clips are made 32 s long to hold 64 frames.
TOO_LONG = [
    "decode.views.caption.max_frames=64",
    "caption.window_frames=64",
    "caption.engine.max_model_len=8192",
    "split.max_clip_s=32",
]


def _fact(plan: StagePlan, name: str) -> str:
    return next(f.value for f in plan.facts if f.name == name)


def test_qwen25_video_tokens_of_32_frames_at_448_by_784() -> None:
    # Qwen2.5-VL: 14-px patches, 2 x 2 patches a token (factor 28), 2 frames a temporal patch.
    # 448 and 784 are multiples of 28 and 448 x 784 lies inside [3136, 12845056]: no resize.
    patch, merge, temporal = 14, 2, 2
    grid_t, grid_h, grid_w = 32 // temporal, 448 // patch, 784 // patch
    expected = grid_t * grid_h * grid_w // merge**2  # = 16 x (448 / 28) x (784 / 28)
    assert expected == 16 * (448 // 28) * (784 // 28)
    assert video_tokens(32, 448, 784, patch, merge, temporal, 3136, 12845056) == expected
    # An odd count is padded with its last frame to whole temporal patches.
    assert video_tokens(31, 448, 784, patch, merge, temporal, 3136, 12845056) == expected


def test_the_pixel_limits_clamp_a_full_hd_frame_down_and_a_small_one_up() -> None:
    factor, low, high = 28, 128 * 28 * 28, 768 * 28 * 28  # Qwen2VLVideoProcessor's own defaults
    # 1920 x 1080 rounds to 1932 x 1092, over max_pixels: scaled by beta = sqrt(pixels / max), floored.
    beta = math.sqrt(1080 * 1920 / high)
    down = (math.floor(1080 / beta / factor) * factor, math.floor(1920 / beta / factor) * factor)
    assert smart_resize(1080, 1920, factor, low, high) == down
    assert down[0] * down[1] <= high
    per_frame = (down[0] // 14) * (down[1] // 14) // 4
    assert video_tokens(2, 1080, 1920, 14, 2, 2, low, high) == per_frame <= 768
    # 56 x 56 is under min_pixels: scaled up by sqrt(min / pixels), ceiled.
    beta = math.sqrt(low / (56 * 56))
    up = math.ceil(56 * beta / factor) * factor
    assert smart_resize(56, 56, factor, low, high) == (up, up)
    assert video_tokens(2, 56, 56, 14, 2, 2, low, high) == (up // 14) ** 2 // 4 >= 128


def test_the_arithmetic_is_the_installed_processors() -> None:
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize as qwen2
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as qwen3

    for h, w in [(448, 796), (112, 200), (1080, 1920), (30, 900), (56, 56), (20, 40)]:
        for low, high in [(3136, 12845056), (100352, 602112), (16384, 802816)]:
            for factor in (16, 28, 32):
                assert smart_resize(h, w, factor, low, high) == qwen2(h, w, factor, low, high)
                for frames in (2, 8, 32):
                    expected = qwen3(frames, h, w, 2, factor, low, high)
                    assert smart_resize(h, w, factor, low, high, frames, 2) == expected


def test_the_issues_example_is_refused_before_anything_is_built() -> None:
    script = f"""
import sys
from dataengine.config import apply_overrides
from dataengine.plan import BudgetError
from pipelines.plan import plan_caption
from pipelines.recipes import RecipeConfig, get_recipe
recipe = apply_overrides(get_recipe("gpu-qwen25vl-7b-wan"), {TOO_LONG!r})
try:
    plan_caption(recipe, layers=1)
except BudgetError as e:
    print("transformers" in sys.modules, e.budget, e, sep="\\n")
"""
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    imported, budget, message = done.stdout.splitlines()[:3]
    assert imported == "False", "transformers was imported: something was built before the refusal"
    assert budget == "caption.engine.max_model_len"
    assert "caption.engine.max_model_len is broken" in message and "> 8192" in message
    assert "caption.window_frames=" in message and "caption.engine.max_model_len=" in message


def test_the_overrides_the_refusal_names_fix_it() -> None:
    recipe = apply_overrides(get_recipe("gpu-qwen25vl-7b-wan"), TOO_LONG)
    with pytest.raises(BudgetError) as refused:
        caption_budget(recipe)
    named = dict(re.findall(r"([a-z_.]+)=(\d+)", refused.value.fix))
    assert set(named) == {
        "caption.window_frames",
        "decode.views.caption.max_frames",
        "caption.engine.max_model_len",
    }
    for key, value in named.items():
        caption_budget(apply_overrides(recipe, [f"{key}={value}"]))  # fits
        if key != "caption.engine.max_model_len":  # the largest that fits: one more does not
            with pytest.raises(BudgetError):
                caption_budget(apply_overrides(recipe, [f"{key}={int(value) + 1}"]))
    with pytest.raises(BudgetError):
        caption_budget(
            apply_overrides(
                recipe,
                [
                    f"caption.engine.max_model_len={named['caption.engine.max_model_len']}",
                    "caption.sampling.max_tokens=1025",
                ],
            )
        )


def test_a_clip_of_several_windows_has_a_fuse_pass_within_the_budget() -> None:
    recipe = apply_overrides(get_recipe("gpu-qwen25vl-7b-wan"), ["caption.window_frames=8"])
    budget = caption_budget(recipe)
    frames = budget.view.expected
    assert len(budget.windows) == -(-frames // 8) and sum(w.frames for w in budget.windows) == frames
    max_tokens = recipe.caption.sampling.max_tokens
    assert budget.fuse_prompt > len(budget.windows) * max_tokens
    with pytest.raises(BudgetError, match="fuse pass"):
        caption_budget(apply_overrides(recipe, [f"caption.engine.max_model_len={budget.fuse_prompt}"]))


def _safetensors_params(folder: Path) -> int:
    """Parameters stored in a folder's model.safetensors, from its header's shapes."""
    with (folder / "model.safetensors").open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def test_the_demo_plan_measures_the_world_captioner() -> None:
    recipe = get_recipe("demo")
    plan = plan_caption(recipe, layers=None)
    folder = Path(resolve_model(recipe.caption.engine.model))
    assert plan.params == _safetensors_params(folder)
    view = recipe.decode.views["caption"]
    frames = min(view.max_frames or 0, int(view.fps or 0) * int(recipe.split.max_clip_s))
    assert _fact(plan, "windows per clip").startswith(f"{-(-frames // recipe.caption.window_frames)} (")
    # The tower's rows (measured) are the processor arithmetic of the window's resized frame.
    preprocessor = json.loads((folder / "video_preprocessor_config.json").read_text())
    patch, merge = preprocessor["patch_size"], preprocessor["merge_size"]
    width, height = (int(v) for v in _fact(plan, "processed frame").split(" ")[0].split("x"))
    expected = -(-frames // preprocessor["temporal_patch_size"]) * (height // patch) * (width // patch)
    assert int(_fact(plan, "vision tokens (measured)")) == expected // merge**2
    assert plan.peak_bytes_here and plan.gpu_bytes and plan.flops_per_clip > 0
    assert "own tokenizer" in next(f.source for f in plan.facts if f.name == "prompt tokens per window")


@pytest.mark.slow
def test_the_gpu_recipe_plans_qwen25_vl_7b_at_its_published_size() -> None:
    recipe = get_recipe("gpu-qwen25vl-7b-wan")
    assert isinstance(recipe.caption.engine, VLLMEngineConfig)
    plan = plan_caption(recipe, layers=1)
    model = recipe.caption.engine.model
    assert plan.params == PUBLISHED[model][1]  # 8,292,166,656 on the model card
    used, limit = _fact(plan, "context per window").split(" <= ")
    prompt, out = (int(n) for n in used.removesuffix(" out").split(" + "))
    assert prompt + out <= int(limit) == recipe.caption.engine.max_model_len
    assert int(_fact(plan, "vision tokens (measured)")) == int(_fact(plan, "video tokens per window"))
    weights = plan.params * 2  # bfloat16
    assert plan.gpu_bytes is not None and weights < plan.gpu_bytes < 80 * 10**9
    assert any("1 of 28 language layers" in note for note in plan.notes)


def _with_engine(recipe: RecipeConfig, engine: EngineConfig) -> RecipeConfig:
    caption = recipe.caption.model_copy(update={"engine": engine})
    return RecipeConfig.model_validate(recipe.model_copy(update={"caption": caption}).model_dump())


def test_other_engine_kinds_plan_by_the_same_rules() -> None:
    gpu = get_recipe("gpu-qwen25vl-7b-wan")
    model = gpu.caption.engine.model
    served = plan_caption(
        _with_engine(gpu, OpenAIEngineConfig(model=model, base_url="http://127.0.0.1:8000/v1"))
    )
    assert served.peak_bytes_here is None and served.gpu_bytes is None  # a server: nothing built here
    assert served.params == PUBLISHED[model][1] and "not built" in served.model
    assert int(_fact(served, "video tokens per window")) == caption_budget(gpu).worst.video
    demo = get_recipe("demo")
    local = plan_caption(_with_engine(demo, TransformersEngineConfig(model=demo.caption.engine.model)))
    limit = json.loads((Path(resolve_model(demo.caption.engine.model)) / "config.json").read_text())
    assert _fact(local, "context per window").endswith(
        f"<= {limit['text_config']['max_position_embeddings']}"
    )
    assert local.peak_bytes_here
