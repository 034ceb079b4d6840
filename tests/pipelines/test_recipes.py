from __future__ import annotations

import pytest

from dataengine.caption.engines import VLLMEngineConfig
from dataengine.config import ConfigError
from pipelines.captioning import with_engine
from pipelines.recipes import RECIPES, OverrideError, RecipeConfig, apply_overrides, get_recipe


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_complete_and_valid(name: str) -> None:
    recipe = get_recipe(name)
    assert recipe.name == name
    assert RecipeConfig.model_validate(recipe.model_dump(mode="json")) == recipe
    assert recipe.caption.view in recipe.decode.views


def test_the_gpu_recipe_names_a_real_checkpoint() -> None:
    engine = get_recipe("gpu-qwen25vl-7b").caption.engine
    assert isinstance(engine, VLLMEngineConfig)
    assert engine.model == "Qwen/Qwen2.5-VL-7B-Instruct" and engine.dtype == "bfloat16"


def test_overrides_set_nested_keys_with_json_values() -> None:
    recipe = apply_overrides(
        get_recipe("demo"),
        [
            "caption.sampling.max_tokens=256",
            "split.mode=fixed",
            'caption.engine.extra={"enforce_eager": false}',
        ],
    )
    assert recipe.caption.sampling.max_tokens == 256 and recipe.split.mode == "fixed"
    assert recipe.caption.engine.extra == {"enforce_eager": False}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("caption.sampling.max_tokenz=5", "unknown key 'caption.sampling.max_tokenz': caption.sampling has"),
        ("nothing", "is not key=value"),
        ("split.mode=sideways", "invalid override"),
        ("probe.timeout_s.deeper=1", "not a section"),
    ],
)
def test_bad_overrides_are_refused_with_a_message(override: str, message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        apply_overrides(get_recipe("demo"), [override])


def test_unknown_recipe_and_engine_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="known recipes: demo, gpu-qwen25vl-7b"):
        get_recipe("nope")
    with pytest.raises(ConfigError, match="--base-url"):
        with_engine(get_recipe("demo"), "openai")
    switched = with_engine(get_recipe("demo"), "transformers")
    assert switched.caption.engine.kind == "transformers"
    assert switched.caption.engine.model == "builtin:tiny-qwen2_5_vl"
