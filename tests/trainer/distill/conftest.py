"""The students most distillation tests look at: one of each family, eight steps on twelve world clips with
every option on (digit weight, a frozen sine-cosine position table at a fixed scale, grounding and dense
losses), trained once for the package."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.distill import DistillConfig, Pair, distill, world_pairs


@pytest.fixture(scope="package", params=["qwen2_5_vl", "qwen3_vl"])
def student(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Pair]]:
    work = tmp_path_factory.mktemp("distill")
    config = DistillConfig(
        pairs="world", world_clips=12, max_steps=8, minutes=None, batch_size=4, log_every=2, warmup_steps=2,
        family=request.param, digit_weight=0.5, freeze_positions=True, position_rms=3.0,
        grounding_weight=0.5, dense_weight=0.5,
    )  # fmt: skip
    pairs = world_pairs(config.world_clips, config.seed, config.view, work, workers=1)
    distill(config, work / "student", pairs)
    return work / "student", pairs
