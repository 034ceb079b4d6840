from __future__ import annotations

import pytest

from dataengine.caption.engines import VLLMEngineConfig
from dataengine.config import ConfigError, OverrideError, apply_overrides
from pipelines.captioning import with_engine
from pipelines.recipes import RECIPES, RecipeConfig, get_recipe


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_complete_and_valid(name: str) -> None:
    recipe = get_recipe(name)
    assert recipe.name == name
    assert RecipeConfig.model_validate(recipe.model_dump(mode="json")) == recipe
    assert recipe.caption.view in recipe.decode.views


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_encodes_a_decoded_view_and_fits_its_pools(name: str) -> None:
    recipe = get_recipe(name)
    assert recipe.encode.view in recipe.decode.views
    for step in ("probe", "decode", "caption", "encode"):
        pool = getattr(recipe.pools, step)
        assert 1 <= pool.min_workers <= pool.max_workers


def test_the_gpu_recipe_names_real_checkpoints_and_gpus() -> None:
    recipe = get_recipe("gpu-qwen25vl-7b-wan")
    engine = recipe.caption.engine
    assert isinstance(engine, VLLMEngineConfig)
    assert engine.model == "Qwen/Qwen2.5-VL-7B-Instruct" and engine.dtype == "bfloat16"
    assert recipe.encode.vae.model == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" and recipe.encode.vae.kind == "wan"
    assert recipe.pools.caption.num_gpus == 1 and 0 < recipe.pools.encode.num_gpus <= 1
    assert recipe.pools.decode.num_gpus == 0 and recipe.pools.decode.max_workers > 1
    assert recipe.encode.vae.device == "cuda" and recipe.text is not None and recipe.text.device == "cuda"


def test_the_demo_recipe_needs_no_hub_and_fits_two_cores() -> None:
    recipe = get_recipe("demo")
    models = [recipe.caption.engine.model, recipe.encode.vae.model]
    assert all(m.startswith("builtin:") for m in models)
    pools = [getattr(recipe.pools, s) for s in ("probe", "decode", "caption", "encode")]
    assert sum(p.num_cpus * p.min_workers for p in pools) <= 2 and all(p.num_gpus == 0 for p in pools)


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
        ("pools.caption.gpus=1", "unknown key 'pools.caption.gpus': pools.caption has .*num_gpus"),
        ("pools.decode.min_workers=3", "max_workers 2 < min_workers 3"),
    ],
)
def test_bad_overrides_are_refused_with_a_message(override: str, message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        apply_overrides(get_recipe("demo"), [override])


def test_unknown_recipe_and_engine_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="known: cpu-small, demo, gpu-qwen25vl-7b-wan"):
        get_recipe("nope")
    with pytest.raises(ConfigError, match="--base-url"):
        with_engine(get_recipe("demo"), "openai")
    switched = with_engine(get_recipe("demo"), "transformers")
    assert switched.caption.engine.kind == "transformers"
    assert switched.caption.engine.model == get_recipe("demo").caption.engine.model


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_only_the_world_captioner_gets_the_world_calibrated_gate(name: str) -> None:
    """The redraw verifier and the confidence floors are calibrated on the shipped world captioner; a recipe
    with another captioner must not inherit them (it would refuse every caption)."""
    caption = get_recipe(name).caption
    world = caption.engine.model == "builtin:world-captioner"
    assert (caption.verify is not None) == world
    assert (caption.quality.min_mean_logprob is not None) == world


def test_filters_on_a_view_the_recipe_does_not_decode_is_refused_up_front() -> None:
    with pytest.raises(OverrideError, match=r"filters.view='nope' is not a decoded view; use one of"):
        apply_overrides(get_recipe("demo"), ["filters.view=nope"])
    assert apply_overrides(get_recipe("demo"), ["filters.view=latents"]).filters.view == "latents"
