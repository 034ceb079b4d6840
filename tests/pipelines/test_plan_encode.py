"""The encode, text and learned-filter stages of ``dataengine plan``: shapes by the VAE's and the encoders'
own rules, counts against the library classes, bytes against what the shard writer stores, refusals that name
their fix."""

from __future__ import annotations

import inspect
import io
import itertools
import math

import numpy as np
import pytest

from dataengine.config import apply_overrides
from dataengine.curate.learned import LAION_DIMS
from dataengine.encode.text import TextEmbedder, load_encoder, resolve_text_model
from dataengine.encode.vae import VAE, load_vae
from dataengine.plan import BudgetError
from pipelines.plan.encode import PUBLISHED_VAES, WAN21_VAE, fact_shape, plan_encode
from pipelines.plan.filters import PUBLISHED_TOWERS, SIGLIP_SO400M, plan_filters
from pipelines.plan.text import PUBLISHED_TEXT, T5_V1_1_LARGE, encoder_from_config, plan_text
from pipelines.recipes import RecipeConfig, get_recipe

GPU_RECIPE = "gpu-qwen25vl-7b-wan"


def stored_bytes(array: np.ndarray) -> int:
    """Bytes of ``array`` as an ``.npy`` member (what the shard writer stores: header + raw data)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return len(buffer.getvalue())


def expected_latent(recipe: RecipeConfig, vae: VAE) -> tuple[int, ...]:
    """The latent shape of the recipe's longest clip by the view's rules and the VAE's compression."""
    view = recipe.decode.views[recipe.encode.view]
    assert view.fps is not None and view.width is not None and view.height is not None
    frames = math.ceil(recipe.split.max_clip_s * view.fps)
    if view.max_frames is not None:
        frames = min(frames, view.max_frames)
    used = vae.frames_used(frames)
    s, t = vae.spatial_compression, vae.temporal_compression
    return (vae.info["latent_channels"], 1 + (used - 1) // t, view.height // s, view.width // s)


def meta_vae(recipe: RecipeConfig) -> VAE:
    """The recipe's VAE class built from its published configuration on the meta device (no weights)."""
    import diffusers
    import torch

    values = PUBLISHED_VAES[(recipe.encode.vae.model, recipe.encode.vae.subfolder)].config
    with torch.device("meta"):
        model = getattr(diffusers, values["_class_name"]).from_config(values)
    return VAE(model, recipe.encode.vae)


def test_demo_encode_plan_follows_the_vae_rules() -> None:
    recipe = get_recipe("demo")
    vae = load_vae(recipe.encode.vae)
    plan = plan_encode(recipe)

    latent = expected_latent(recipe, vae)
    assert fact_shape(plan, "latent shape") == latent
    assert fact_shape(plan, "latent shape measured") == latent  # the encode run here agrees with the rule
    assert fact_shape(plan, "latent channels") == (latent[0],)
    assert plan.params == sum(p.numel() for p in vae.model.parameters())
    assert plan.bytes_out_per_clip == stored_bytes(np.zeros(latent, np.float16))
    assert plan.peak_bytes_here is not None and plan.peak_bytes_here > 0
    assert plan.gpu_bytes is None  # the demo encodes on the CPU


def test_encode_flops_are_those_of_a_real_encode() -> None:
    """The FLOPs counted on the meta device are the convolutions counted while the real model encodes a clip,
    plus the mid block's attention (one head per latent frame: QK^T and AV, 2 x 2 x N^2 x C), which a CPU run
    does not count (FlopCounterMode has no formula for CPU's fused attention kernel)."""
    from torch.utils.flop_counter import FlopCounterMode

    recipe = get_recipe("demo")
    vae = load_vae(recipe.encode.vae)
    plan = plan_encode(recipe)
    frames, height, width, _ = fact_shape(plan, "latent view")
    clip = np.random.default_rng(0).integers(0, 256, (1, vae.frames_used(frames), height, width, 3), np.uint8)
    with FlopCounterMode(display=False) as counter:
        vae.encode(clip)
    _, latent_frames, h, w = fact_shape(plan, "latent shape")
    mid_channels = vae.model.config.base_dim * vae.model.config.dim_mult[-1]
    attention = latent_frames * 4 * (h * w) ** 2 * mid_channels
    convolutions = counter.get_flop_counts()["Global"]
    assert set(convolutions) == {torch_op("convolution")}
    assert plan.flops_per_clip == counter.get_total_flops() + attention


def torch_op(name: str) -> object:
    import torch

    return getattr(torch.ops.aten, name)


def test_demo_text_plan_is_what_the_embedder_stores() -> None:
    recipe = get_recipe("demo")
    assert recipe.text is not None and recipe.text.kind == "tokens"
    model = load_encoder(resolve_text_model(recipe.text.model))
    embedder = TextEmbedder(recipe.text)
    embedder.setup()
    [embedding] = embedder.embed(["a red ball rolls left across a striped floor"])
    plan = plan_text(recipe)

    assert fact_shape(plan, "text tokens") == (recipe.text.max_tokens,)
    assert fact_shape(plan, "text dim") == (model.config.hidden_size,)
    assert fact_shape(plan, "text shape") == embedding.emb.shape
    assert fact_shape(plan, "output shape measured") == embedding.emb.shape
    assert plan.params == sum(p.numel() for p in model.parameters())
    assert plan.bytes_out_per_clip == sum(stored_bytes(a) for a in embedding.members().values())
    assert plan.flops_per_clip > 0 and plan.gpu_bytes is None


def test_a_latent_width_the_vae_cannot_divide_names_its_fix() -> None:
    """Width 830 passes the recipe's own validation; the plan refuses it before measuring anything."""
    recipe = apply_overrides(get_recipe(GPU_RECIPE), ["decode.views.latents.width=830"])
    s = meta_vae(recipe).spatial_compression
    with pytest.raises(BudgetError) as refused:
        plan_encode(recipe)
    fix = round(830 / s) * s
    assert refused.value.fix == f"decode.views.latents.width={fix}"
    assert "decode.views.latents.width" in str(refused.value) and str(s) in str(refused.value)


def test_more_text_tokens_than_positions_names_its_fix() -> None:
    recipe = apply_overrides(get_recipe("demo"), ["text.max_tokens=600"])
    assert recipe.text is not None
    positions = load_encoder(resolve_text_model(recipe.text.model)).config.max_position_embeddings
    with pytest.raises(BudgetError, match=r"text\.max_tokens") as refused:
        plan_text(recipe)
    assert refused.value.fix == f"text.max_tokens={positions}"


def test_the_published_wan_vae_table_is_the_diffusers_class_default() -> None:
    """diffusers' AutoencoderKLWan defaults are the Wan 2.1 VAE; the table holds what its config.json says."""
    import diffusers

    defaults = inspect.signature(diffusers.AutoencoderKLWan.__init__).parameters
    values = PUBLISHED_VAES[(WAN21_VAE, "vae")].config
    assert {k: v for k, v in values.items() if k in defaults} == {
        k: defaults[k].default for k in values if k in defaults
    }
    assert set(values) - set(defaults) == {"_class_name"}


@pytest.mark.slow
def test_gpu_recipe_encode_and_text_plans() -> None:
    """The Wan 2.1 VAE at 81 x 480 x 832 (measured on its first frame here: ~40 s) and the T5 v1.1 large
    encoder (random weights) on 128 tokens."""
    import diffusers

    recipe = get_recipe(GPU_RECIPE)
    vae = meta_vae(recipe)
    plan = plan_encode(recipe, frames_measured=1)
    latent = expected_latent(recipe, vae)
    assert fact_shape(plan, "latent shape") == latent
    assert fact_shape(plan, "frames encoded") == (recipe.decode.views["latents"].max_frames,)  # 81 = 1 + 4k
    assert plan.params == sum(p.numel() for p in vae.model.parameters())
    assert plan.params == sum(p.numel() for p in diffusers.AutoencoderKLWan().parameters())
    assert plan.bytes_out_per_clip == stored_bytes(np.zeros(latent, np.float16))
    assert fact_shape(plan, "frames measured") == (1,) and any("measured on 1 of" in n for n in plan.notes)
    assert plan.gpu_bytes is not None and plan.gpu_bytes > plan.params * 2  # bf16 weights + activations
    assert any(f.name == "time here, full clip" and f.source.startswith("derived") for f in plan.facts)

    text = plan_text(recipe)
    assert recipe.text is not None
    published = PUBLISHED_TEXT[T5_V1_1_LARGE].config
    assert 330e6 < text.params < 350e6  # T5 v1.1 large's encoder: ~341M published
    assert fact_shape(text, "text tokens") == (recipe.text.max_tokens,)
    assert fact_shape(text, "text dim") == (published["d_model"],)
    assert fact_shape(text, "output shape measured") == (recipe.text.max_tokens, published["d_model"])
    assert text.bytes_out_per_clip == stored_bytes(
        np.zeros((recipe.text.max_tokens, published["d_model"]), np.float16)
    ) + stored_bytes(np.zeros(recipe.text.max_tokens, bool))
    assert text.gpu_bytes is not None and text.gpu_bytes > text.params * 4  # float32 weights + activations
    assert type(encoder_from_config(text_config(published))).__name__ == "T5EncoderModel"


def text_config(values: dict[str, object]) -> object:
    from transformers import AutoConfig

    rest = dict(values)
    return AutoConfig.for_model(str(rest.pop("model_type")), **rest)


def test_the_gpu_recipes_learned_filters_are_planned_at_their_published_sizes() -> None:
    """SigLIP so400m's image tower (~428M with its pooling head), CLIP ViT-L/14's image tower with its
    projection (~304M) and the whole CLIP (~428M), on the recipe's frames at each processor's size."""
    recipe = get_recipe(GPU_RECIPE)
    plans = {plan.stage: plan for plan in plan_filters(recipe)}
    assert set(plans) == {"embed", "aesthetic", "caption_match"}
    assert 400e6 < plans["embed"].params < 440e6
    assert (
        300e6 < plans["aesthetic"].params - sum(a * b + b for a, b in itertools.pairwise(LAION_DIMS)) < 310e6
    )
    assert 420e6 < plans["caption_match"].params < 435e6
    siglip = PUBLISHED_TOWERS[SIGLIP_SO400M].config
    size = siglip["image_size"]
    assert fact_shape(plans["embed"], "input") == (recipe.filters.embed.frames, 3, size, size)
    assert plans["embed"].bytes_out_per_clip == stored_bytes(np.zeros(siglip["hidden_size"], np.float32))
    for plan in plans.values():
        assert plan.flops_per_clip > 2 * plan.params  # at least one token through every weight
        assert plan.gpu_bytes == plan.params * 2  # bfloat16 weights
    assert plan_filters(get_recipe("demo")) == []  # the model-free descriptor: nothing to plan


def test_a_recipe_without_text_embeddings_has_an_empty_text_plan() -> None:
    plan = plan_text(apply_overrides(get_recipe("demo"), ["text=null"]))
    assert (plan.params, fact_shape(plan, "text tokens"), plan.bytes_out_per_clip) == (0, (0,), 0)
