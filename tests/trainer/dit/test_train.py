"""The trainer on real shards written by the project's ShardWriter: loader, overfitting, exact resume, DDP on
two CPU processes (gloo), the curriculum, and the sampler through the tiny Wan VAE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dataengine.config import ConfigError, apply_overrides
from dataengine.encode.text import TextEmbedConfig
from dataengine.shards import ShardConfig, ShardWriter
from tests.net import free_port
from trainer.dit.data import DataConfig, Phase, build_loader, expand_shards, split_shards
from trainer.dit.recipes import cpu_mini, demo
from trainer.dit.sample import loss_curve, sample_video
from trainer.dit.train import METRICS, TrainConfig, Trainer, latest_checkpoint

VAE_INFO = {
    "model": "builtin:tiny-wan", "subfolder": None, "class": "AutoencoderKLWan", "kind": "wan",
    "latent_channels": 4, "spatial_compression": 8, "temporal_compression": 4, "scaling_factor": None,
    "shift_factor": None, "latents_mean": [0.1, -0.2, 0.3, 0.05], "latents_std": [1.5, 2.0, 0.5, 1.25],
}  # fmt: skip


def write_shards(out: Path, n: int, per_shard: int, frames: tuple[int, ...] = (2,)) -> Path:
    """``n`` samples of 4 x T x 8 x 8 latents (T cycling through ``frames``) and 384-d text embeddings."""
    rng = np.random.default_rng(0)
    with ShardWriter(out, ShardConfig(max_samples=per_shard)) as writer:
        for i in range(n):
            t = frames[i % len(frames)]
            latents = (rng.standard_normal((4, t, 8, 8)) + np.arange(4)[:, None, None, None]).astype(
                np.float16
            )
            meta = {"vae": VAE_INFO, "fps": 4.0, "text_encoder": TextEmbedConfig().model_dump(mode="json")}
            sample = {
                "latents.npy": latents,
                "text_emb.npy": rng.standard_normal(384).astype(np.float16),
                "txt": f"caption {i}",
                "json": meta,
            }
            writer.write(f"{i:032x}", sample, {"latent_shape": list(latents.shape)})
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("train_shards"), 16, per_shard=4)


def config(shards: Path, steps: int, *overrides: str) -> TrainConfig:
    base = demo().model_copy(update={"data": DataConfig(shards=[str(shards)])})
    return apply_overrides(
        base,
        [
            f"steps={steps}",
            "data.batch_size=4",
            "data.num_workers=1",
            "ckpt_every=10",
            "log_every=5",
            *overrides,
        ],
    )


def params(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_shard_lists_expand_and_split_without_overlap(shards: Path) -> None:
    urls = expand_shards([str(shards)])
    assert len(urls) == 4 and urls == expand_shards([str(shards / "shards" / "shard-00000-00000{0..3}.tar")])
    assert urls == expand_shards([str(shards / "shards" / "*.tar")])
    with pytest.raises(ConfigError, match="no shards found"):
        expand_shards([str(shards / "nothing-*.tar")])
    parts = [
        split_shards(urls, epoch=1, seed=0, rank=r, world=2, worker=w, workers=2)
        for r in (0, 1)
        for w in (0, 1)
    ]
    assert sorted(u for part in parts for u in part) == urls and all(len(p) == 1 for p in parts)
    assert split_shards(urls, 1, 0, 0, 1, 0, 1) != split_shards(
        urls, 2, 0, 0, 1, 0, 1
    )  # reshuffled per epoch


def test_too_few_shards_for_ranks_and_workers_is_refused(shards: Path) -> None:
    with pytest.raises(ConfigError, match="4 shards for 2 ranks x 3 loader workers"):
        build_loader(DataConfig(shards=[str(shards)], num_workers=3), rank=0, world=2)


def test_the_curriculum_feeds_images_first_then_video(tmp_path: Path) -> None:
    mixed = write_shards(tmp_path, 48, per_shard=8, frames=(1, 3))
    data = DataConfig(
        shards=[str(mixed)], batch_size=2, num_workers=0, shuffle_buffer=8,
        curriculum=[Phase(until_step=4, image_ratio=1.0), Phase(image_ratio=0.0)],
    )  # fmt: skip
    batches = [b for _, b in zip(range(8), build_loader(data, 0, 1), strict=False)]
    frames = [b["latents_BCTHW"].shape[2] for b in batches]
    assert frames == [1, 1, 1, 1, 3, 3, 3, 3]


def test_overfitting_a_handful_of_samples_lowers_the_loss_clearly(tmp_path: Path) -> None:
    four = write_shards(tmp_path / "four", 4, per_shard=4)
    cfg = config(four, 400, "optim.lr=0.005", "optim.warmup_steps=5", "flow.text_dropout=0.0", "log_every=50")
    Trainer(cfg, tmp_path / "ck").fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "ck" / METRICS).read_text().splitlines()]
    assert all(np.isfinite(losses)) and len(losses) == 8  # each the mean of 50 steps
    assert losses[-1] < 0.6 * losses[0], losses


def test_the_cpu_mini_recipe_trains_on_one_schedule_whatever_the_steps(shards: Path, tmp_path: Path) -> None:
    lrs = []
    for steps in (5, 10):
        base = cpu_mini().model_copy(update={"data": DataConfig(shards=[str(shards)])})
        cfg = apply_overrides(base, [f"steps={steps}", "data.batch_size=4", "log_every=5", "ckpt_every=5"])
        trainer = Trainer(cfg, tmp_path / str(steps))
        trainer.fit()
        assert (trainer.model.config.hidden, trainer.model.config.depth) == (128, 4)
        lines = [json.loads(x) for x in (tmp_path / str(steps) / METRICS).read_text().splitlines()]
        assert all(np.isfinite(m["loss"]) for m in lines)
        lrs.append(lines[0]["lr"])  # step 5 of both: a rerun with a larger --steps continues one schedule
    assert lrs[0] == lrs[1]


def test_twenty_steps_then_twenty_more_equal_forty_steps(shards: Path, tmp_path: Path) -> None:
    horizon = "optim.schedule_steps=40"  # the learning-rate schedule may not depend on where a run stops
    straight = Trainer(config(shards, 40, horizon), tmp_path / "straight")
    straight.fit()

    Trainer(config(shards, 20, horizon), tmp_path / "resumed").fit()
    assert latest_checkpoint(tmp_path / "resumed").name == "step_00000020.pt"  # type: ignore[union-attr]
    resumed = Trainer(config(shards, 40, horizon), tmp_path / "resumed")
    resumed.fit()

    assert resumed.step == straight.step == 40
    torch.testing.assert_close(params(resumed), params(straight), rtol=1e-5, atol=1e-6)
    lines = [json.loads(x) for x in (tmp_path / "resumed" / METRICS).read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(5, 45, 5))  # no step logged twice
    assert len(list((tmp_path / "resumed" / "checkpoints").glob("*.pt"))) == 3  # keep_last


def test_ddp_on_two_cpu_processes(shards: Path, tmp_path: Path) -> None:
    port = str(free_port())
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
        "-m", "cli", "train", "--shards", str(shards), "--out", str(tmp_path), "--steps", "6",
        "--set", "data.num_workers=1", "--set", "data.batch_size=2", "--set", "log_every=2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / METRICS).read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4, 6] and all(np.isfinite(m["loss"]) for m in lines)
    state: dict[str, Any] = torch.load(latest_checkpoint(tmp_path), weights_only=False)  # type: ignore[arg-type]
    assert state["step"] == 6 and (tmp_path / "loss_curve.png").stat().st_size > 0


def test_the_sampler_writes_a_video_and_the_loss_curve(shards: Path, tmp_path: Path) -> None:
    Trainer(config(shards, 10), tmp_path / "ck").fit()
    result = sample_video(tmp_path / "ck", "A red circle moves right.", tmp_path / "sample", steps=4)
    assert result.latents_shape == (4, 2, 8, 8)
    assert result.frames_shape == (5, 64, 64, 3)  # the tiny Wan VAE: 1 + (T - 1) * 4 frames, 8x upsampling
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=width,height,nb_read_frames",
         "-of", "json", str(result.video)], capture_output=True, text=True, check=True,
    )  # fmt: skip
    stream = json.loads(probe.stdout)["streams"][0]
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (64, 64, 5)
    assert result.sheet.stat().st_size > 0
    curve = loss_curve(tmp_path / "ck" / METRICS, tmp_path / "curve.png")
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ray_train_runs_the_same_loop_on_two_workers(shards: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "cli", "train", "--shards", str(shards), "--out", str(tmp_path),
        "--steps", "4", "--ray-workers", "2", "--set", "data.num_workers=1", "--set", "data.batch_size=2",
        "--set", "log_every=2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / METRICS).read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000004.pt"
