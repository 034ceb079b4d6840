"""The DiT stage of dataengine plan: real presets on the shapes a data recipe produces, measured here."""

from __future__ import annotations

import pytest

from dataengine.plan import BudgetError
from trainer.dit.model import build_dit, flops_per_sample
from trainer.dit.plan import STATE_BYTES_PER_PARAM, max_batch, plan_train
from trainer.dit.recipes import get_train_recipe


def test_the_demo_dit_on_demo_latents() -> None:
    config = get_train_recipe("demo")
    plan = plan_train(config, (16, 3, 8, 8), text_tokens=32, text_dim=384, measured_depth=None)
    built = build_dit(config.model.preset, 16, 384, patch=config.model.patch)
    assert plan.params == built.num_params()
    tokens = 3 * (8 // 2) * (8 // 2)  # patch (1, 2, 2)
    facts = {f.name: f.value for f in plan.facts}
    assert facts["tokens per sample"] == f"{tokens:,}"
    assert plan.flops_per_clip == flops_per_sample(built.config, tokens, 32)
    assert plan.peak_bytes_here and plan.peak_bytes_here > 0
    assert plan.gpu_bytes and plan.gpu_bytes > plan.params * STATE_BYTES_PER_PARAM
    assert not plan.notes  # every block was built and run


def test_a_latent_the_patching_refuses_names_the_fix() -> None:
    with pytest.raises(BudgetError) as refused:
        plan_train(get_train_recipe("demo"), (16, 3, 8, 9), text_tokens=8, text_dim=384)
    message = str(refused.value)
    assert "width 9 is not a multiple of 2" in message and "decode.views.latents" in message


def test_a_cut_model_says_so_and_the_batch_that_fits_follows_the_estimate() -> None:
    config = get_train_recipe("cpu-mini")
    plan = plan_train(config, (16, 5, 16, 16), text_tokens=16, text_dim=384, measured_depth=1)
    depth = build_dit(config.model.preset, 16, 384).config.depth
    assert f"1 of {depth} blocks" in plan.notes[0] and "measured with 1" in plan.model
    assert plan.gpu_bytes is not None
    batch = config.data.batch_size
    assert max_batch(plan, plan.params, plan.gpu_bytes, batch) == batch  # the estimate holds its own batch
