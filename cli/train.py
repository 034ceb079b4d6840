"""DiT commands: train (flow matching on latent shards) and sample (a clip from a prompt)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import app
from cli.render import console
from dataengine.config import ConfigError, apply_overrides


@app.command()
def train(
    shards: Annotated[
        list[str], typer.Option(help="shards: a run's --out folder, .tar files, globs, {a..b} braces, URLs")
    ],
    out: Annotated[Path, typer.Option(help="checkpoints/, metrics.jsonl, loss_curve.png; rerun to resume")],
    steps: Annotated[int, typer.Option(min=1, help="train until this step (a larger value resumes)")] = 200,
    recipe: Annotated[str, typer.Option(help="training recipe: demo (tiny DiT, CPU), gpu-dit-b")] = "demo",
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a recipe key, e.g. --set optim.lr=3e-4"),
    ] = None,
    ray_workers: Annotated[
        int, typer.Option(min=0, help="run on this many Ray Train workers (multi-node); 0: this process")
    ] = 0,
    address: Annotated[str | None, typer.Option(help="Ray cluster address for --ray-workers")] = None,
    ray_gpus: Annotated[
        bool | None,
        typer.Option(
            "--ray-gpus/--no-ray-gpus", help="one GPU per Ray Train worker (default: if this host has one)"
        ),
    ] = None,
) -> None:
    """Train the DiT with flow matching on latent shards. Running it again on the same --out resumes from the
    latest checkpoint at the step it reached, with the same data order. Many GPUs:
    torchrun --nproc_per_node 8 --no-python dataengine train --shards ... --out ... --recipe gpu-dit-b"""
    from trainer.dit.recipes import get_train_recipe
    from trainer.dit.sample import loss_curve
    from trainer.dit.train import METRICS, Trainer

    config = apply_overrides(get_train_recipe(recipe), [*(overrides or []), f"steps={steps}"])
    config = config.model_copy(update={"data": config.data.model_copy(update={"shards": shards})})
    if ray_workers:
        from trainer.dit.ray_train import train_on_ray

        use_gpu = torch_cuda() if ray_gpus is None else ray_gpus
        train_on_ray(config, out, ray_workers, use_gpu=use_gpu, address=address)
        console.print(f"loss curve {loss_curve(out / METRICS, out / 'loss_curve.png')}")
        return
    trainer = Trainer(config, out)
    start = trainer.step
    with console.status(f"training {config.model.preset} DiT ({trainer.model.num_params():,} parameters)"):
        checkpoint = trainer.fit()
    if trainer.dist.rank != 0:
        return
    curve = loss_curve(out / METRICS, out / "loss_curve.png")
    console.print(f"steps {start} -> {trainer.step}; checkpoint {checkpoint}")
    console.print(f"metrics {out / METRICS}\nloss curve {curve}")


def torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@app.command()
def sample(
    ckpt: Annotated[Path, typer.Option(help="a checkpoint file, or the --out folder of dataengine train")],
    prompt: Annotated[str, typer.Option(help="the caption to generate a clip for")],
    out: Annotated[Path, typer.Option(help="folder for sample.mp4 and sample.png")] = Path("out/sample"),
    steps: Annotated[int, typer.Option(min=1, help="Euler steps")] = 30,
    cfg: Annotated[float, typer.Option(help="classifier-free guidance scale (1: none)")] = 4.0,
    seed: Annotated[int, typer.Option()] = 0,
    latent_shape: Annotated[
        str | None, typer.Option(help="C,T,H,W of the latents to generate (default: the training data's)")
    ] = None,
) -> None:
    """Generate a clip from a prompt with the EMA weights; decode it with the VAE the shards recorded."""
    from trainer.dit.sample import sample_video

    shape = tuple(int(v) for v in latent_shape.split(",")) if latent_shape else None
    if shape is not None and len(shape) != 4:
        raise ConfigError(f"--latent-shape needs C,T,H,W; got {latent_shape!r}")
    result = sample_video(ckpt, prompt, out, shape, steps=steps, cfg_scale=cfg, seed=seed)
    console.print(f"video {result.video} ({'x'.join(map(str, result.frames_shape))})\nframes {result.sheet}")
