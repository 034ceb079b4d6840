"""Training recipes: functions returning a complete ``TrainConfig`` (shards and steps come from the CLI).

``demo``       the tiny DiT on CPU: what ``dataengine demo`` trains for a few minutes on the demo run's shards
``cpu-mini``   a 4-block DiT on CPU for tens of minutes on a few hundred clips: the recipe under which prompt
               adherence rises (``dataengine demo --train-recipe cpu-mini``); a fixed 10k-step cosine, so
               reruns with a larger --steps continue one schedule
``gpu-dit-b``  DiT-B/2 in bf16 on GPUs with torch.compile and activation checkpointing, 2 x 16 samples a GPU
               per step; an image-first curriculum: images only for 20k steps, then half images, then mostly
               video
"""

from __future__ import annotations

from dataengine.config import Registry
from trainer.dit.data import DataConfig, Phase
from trainer.dit.flow import FlowConfig
from trainer.dit.train import ModelConfig, OptimConfig, TrainConfig


def demo() -> TrainConfig:
    return TrainConfig(
        name="demo",
        model=ModelConfig(preset="tiny"),
        data=DataConfig(batch_size=2, num_workers=1, shuffle_buffer=32),
        optim=OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1),
        flow=FlowConfig(text_dropout=0.1),
        steps=200,
        ema_decay=0.99,
        log_every=5,
        ckpt_every=50,
        precision="fp32",
    )


def cpu_mini() -> TrainConfig:
    return TrainConfig(
        name="cpu-mini",
        model=ModelConfig(preset="mini"),
        data=DataConfig(batch_size=8, num_workers=1, shuffle_buffer=256),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, min_lr_ratio=0.1, schedule_steps=10_000),
        flow=FlowConfig(text_dropout=0.1),
        steps=10_000,
        ema_decay=0.999,
        log_every=25,
        ckpt_every=500,
        precision="fp32",
    )


def gpu_dit_b() -> TrainConfig:
    return TrainConfig(
        name="gpu-dit-b",
        # dataengine plan: a video sample of the data recipe (16x21x60x104 latents, 32,760 tokens) needs
        # ~22 GiB of bf16 activations without checkpointing, so 32 a GPU (~695 GiB) could never fit an 80 GB
        # card; with checkpointing a step of 16 needs ~40 GiB. Two micro-batches keep 32 a GPU per step.
        model=ModelConfig(preset="B", grad_checkpointing=True),
        data=DataConfig(
            batch_size=16,
            num_workers=8,
            prefetch_factor=4,
            shuffle_buffer=2000,
            curriculum=[
                Phase(until_step=20_000, image_ratio=1.0),
                Phase(until_step=40_000, image_ratio=0.5),
                Phase(image_ratio=0.2),
            ],
        ),
        optim=OptimConfig(lr=1e-4, weight_decay=0.0, warmup_steps=1000, grad_clip=1.0, accum_steps=2),
        steps=400_000,
        ema_decay=0.9999,
        log_every=50,
        ckpt_every=2000,
        precision="bf16",
        compile=True,
    )


TRAIN_RECIPES: Registry[TrainConfig] = Registry(
    "training recipe", {"demo": demo, "cpu-mini": cpu_mini, "gpu-dit-b": gpu_dit_b}
)
get_train_recipe = TRAIN_RECIPES.get
