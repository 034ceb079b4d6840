"""The shipped world VAE reconstructs held-out clips as well as its training.json says; training runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataengine.config import ConfigError
from dataengine.encode.tiny_vae import SHIPPED, resolve_vae
from dataengine.encode.vae import VAEConfig, load_vae, normalization
from pipelines.recipes import demo
from trainer.vae import (
    VAETrainConfig,
    WanArch,
    build_model,
    fit,
    heldout_psnr,
    heldout_world,
    train_vae,
    world_seeds,
)

WORLD_VAE = VAEConfig(kind="wan", model="builtin:world-vae")
MARGIN_DB = 1.0  # the documented number is measured on these very clips; the margin absorbs BLAS differences


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two shared cores: more threads than one make these small models tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def report() -> dict[str, object]:
    report: dict[str, object] = json.loads((SHIPPED["world-vae"][1] / "training.json").read_text())
    return report


@pytest.fixture(scope="module")
def heldout_frames(report: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    config = VAETrainConfig.model_validate(report["config"])
    return heldout_world(config, tmp_path_factory.mktemp("heldout"))


def test_shipped_vae_reaches_its_documented_heldout_psnr(
    report: dict[str, object], heldout_frames: np.ndarray
) -> None:
    documented = report["heldout_psnr_db"]
    assert isinstance(documented, dict)
    assert len(heldout_frames) == report["heldout_clips"]["world"]  # type: ignore[index]
    psnr = heldout_psnr(WORLD_VAE, heldout_frames)
    assert psnr is not None and psnr >= documented["world"] - MARGIN_DB


def test_a_random_vae_does_not_reach_it(report: dict[str, object], heldout_frames: np.ndarray) -> None:
    psnr = heldout_psnr(VAEConfig(kind="wan", model="builtin:tiny-wan"), heldout_frames)
    assert psnr is not None and psnr < report["heldout_psnr_db"]["world"] - MARGIN_DB  # type: ignore[index]


def test_shipped_vae_loads_with_its_latent_statistics(report: dict[str, object]) -> None:
    vae = load_vae(WORLD_VAE)
    mean, scale = normalization(vae.info)
    arch = VAETrainConfig.model_validate(report["config"]).arch
    compression = arch.constructor_kwargs()
    assert vae.info["class"] == "AutoencoderKLWan" and (
        vae.spatial_compression,
        vae.temporal_compression,
    ) == (compression["scale_factor_spatial"], compression["scale_factor_temporal"])
    assert len(mean) == vae.info["latent_channels"] and np.all(scale > 0)
    assert report["steps"] > 0  # type: ignore[operator]
    with pytest.raises(ConfigError, match="not a built-in VAE of kind 'ltx'"):
        resolve_vae("builtin:world-vae", "ltx")


def test_training_frames_are_the_demo_latents_view() -> None:
    assert VAETrainConfig().view == demo().decode.views["latents"]


def test_training_and_heldout_world_clips_are_disjoint() -> None:
    config = VAETrainConfig(world_clips=64, heldout_world_clips=8)
    assert not set(world_seeds(config, heldout=False)) & set(world_seeds(config, heldout=True))
    other_seed = config.model_copy(update={"seed": 1})
    assert world_seeds(other_seed, heldout=True) == world_seeds(config, heldout=True)
    assert world_seeds(other_seed, heldout=False) != world_seeds(config, heldout=False)


def _tiny(**changes: object) -> VAETrainConfig:
    settings: dict[str, object] = {
        "minutes": None, "max_steps": 2, "batch_size": 2, "crop": 16, "world_clips": 3,
        "heldout_world_clips": 2, "footage": {"train_clips": 0, "heldout_clips": 0},
        "arch": {"base_dim": 4, "z_dim": 4},
    }  # fmt: skip
    return VAETrainConfig.model_validate({**settings, **changes})


def test_training_is_deterministic_given_the_seed() -> None:
    frames_NTHWC = np.random.default_rng(0).integers(0, 256, (4, 9, 32, 32, 3), dtype=np.uint8)
    config = _tiny(width=32, height=32)
    states = []
    for _ in range(2):
        model = build_model(config)
        fit(config, model, frames_NTHWC, log=lambda _: None)
        states.append(model.state_dict())
    assert all(np.array_equal(states[0][k].numpy(), states[1][k].numpy()) for k in states[0])


def test_train_vae_writes_a_folder_load_vae_loads(tmp_path: Path) -> None:
    out = tmp_path / "vae"
    result = train_vae(_tiny(), out, log=lambda _: None)
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "training.json",
        "reconstruction.png",
    }
    written = json.loads((out / "training.json").read_text())
    assert written["steps"] == result.steps == 2 and written["heldout_psnr_db"]["footage"] is None
    vae = load_vae(VAEConfig(kind="wan", model=str(out)))
    assert vae.info["latent_channels"] == 4 and len(vae.info["latents_std"]) == 4
    assert (vae.spatial_compression, vae.temporal_compression) == (4, 4)  # the default arch's three levels
    latents = vae.encode(np.zeros((1, 9, 32, 32, 3), np.uint8))
    assert latents.shape[-3:] == (3, 8, 8)
    assert result.psnr_db["world"] is not None and result.psnr_db["world"] > 0
    config = _tiny()
    sheet = Image.open(out / "reconstruction.png")  # each held-out clip: 3 frames, a gap, 3 rebuilt, 2x
    assert sheet.size == (
        2 * (6 * config.width + 8),
        2 * (config.heldout_world_clips * (config.height + 4) - 4),
    )
    with pytest.raises(FileExistsError):
        train_vae(_tiny(), out, log=lambda _: None)


def test_the_recorded_compression_follows_the_levels() -> None:
    wan21 = WanArch(base_dim=8, dim_mult=[1, 2, 4, 4], temperal_downsample=[False, True, True])
    kwargs = wan21.constructor_kwargs()
    assert (kwargs["scale_factor_spatial"], kwargs["scale_factor_temporal"]) == (8, 4)
    kwargs = WanArch(dim_mult=[1, 2, 2], temperal_downsample=[False, True]).constructor_kwargs()
    assert (kwargs["scale_factor_spatial"], kwargs["scale_factor_temporal"]) == (4, 2)


@pytest.mark.parametrize(
    ("dim_mult", "temporal", "message"),
    [([1, 2, 2], [True], "one entry per resolution change"), ([1, 2, 4], [True, True], "two equal entries")],
)
def test_an_arch_diffusers_cannot_build_is_refused_with_the_fix(
    dim_mult: list[int], temporal: list[bool], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        WanArch(dim_mult=dim_mult, temperal_downsample=temporal)
