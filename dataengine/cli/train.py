"""Model commands: train (the DiT), eval-captions, probe-student, distill, sample, train-vae."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from dataengine.cli.app import app, console
from dataengine.config import ConfigError
from dataengine.media import require_ffmpeg
from pipelines.recipes import apply_overrides, get_recipe


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
    torchrun --nproc_per_node 8 -m dataengine.cli train --shards ... --out ... --recipe gpu-dit-b"""
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


@app.command("eval-captions")
def eval_captions_cmd(
    recipe: Annotated[
        str, typer.Option(help="whose captioner to score: demo, cpu-small, gpu-qwen25vl-7b-wan")
    ] = "demo",
    n: Annotated[int, typer.Option(min=1, help="held-out world clips to caption")] = 16,
    out: Annotated[Path, typer.Option(help="folder for the clips, report.html and scores.json")] = Path(
        "out/eval-captions"
    ),
    seed: Annotated[
        int | None, typer.Option(help="another held-out set (default: the documented one)")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="override a recipe key, e.g. --set caption.engine.model=builtin:tiny-qwen2_5_vl"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the scores as one JSON document")] = False,
) -> None:
    """Score a captioner on held-out synthetic-world clips: fact recall and precision per attribute, and a
    blind reconstruction (the clip redrawn from the caption alone: PSNR, per-object IoU). Works with any
    engine or model a recipe names; the report shows each clip beside its reconstruction."""
    from pipelines.eval_captions import EVAL_SEED, eval_captions

    try:
        config = apply_overrides(get_recipe(recipe), overrides or [])
    except ConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    result = eval_captions(config, out, n=n, seed=EVAL_SEED if seed is None else seed)
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=1))
        return
    _print_fidelity(result.as_json())


@app.command("probe-student")
def probe_student_cmd(
    model: Annotated[
        str, typer.Argument(help="a student folder (dataengine distill --out) or builtin:world-captioner")
    ],
    n: Annotated[int, typer.Option(min=4, help="held-out world clips to probe")] = 48,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as one JSON document")] = False,
) -> None:
    """Look inside a distilled world captioner, teacher-forced on held-out world clips: its guess at the
    first token of each attribute (by object count; at chance it does not know the fact), and whether the
    visual tokens carry their place in the frame at the vision tower's input and output (a linear probe to
    their grid row and column), and what the tokens the text model reads show (a linear probe, fitted on
    three quarters of the clips, to the shape, size word and motion of the object on each token, or the
    scene's pattern and camera movement; compare with the majority baseline). Use it to find out why
    eval-captions misses an attribute."""
    from dataengine.caption.models import resolve_model
    from trainer.distill.probe import probe_student

    result = probe_student(resolve_model(model), n=n, threads=threads).as_json()
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    counts = sorted({k for v in result["attributes"].values() for k in v if k != "all"})
    title = f"teacher-forced first-token accuracy: {result['model']} ({result['clips']} clips)"
    table = Table("attribute", *(f"{k} object{'s' * (k != '1')}" for k in counts), "all", title=title)
    for name, scores in result["attributes"].items():
        table.add_row(name, *(f"{scores[k]:.2f}" if k in scores else "" for k in [*counts, "all"]))
    out = Console()
    out.print(table)
    for where, scores in result["positions"].items():
        out.print(
            f"visual tokens at the tower's {where}: grid row {scores['row']:.2f} "
            f"(chance {scores['row_chance']:.2f}), column {scores['col']:.2f} "
            f"(chance {scores['col_chance']:.2f})"
        )
    table = Table(
        "reading", "accuracy", "majority", "tokens", title="what the visual tokens show (linear probe)"
    )
    for reading, probe in result["contents"].items():
        table.add_row(reading, f"{probe['accuracy']:.2f}", f"{probe['majority']:.2f}", str(probe["tokens"]))
    out.print(table)


def _print_fidelity(scores: dict[str, Any]) -> None:
    table = Table("attribute", "recall", title=f"caption fidelity: {scores['model']} ({scores['engine']})")
    for name, value in scores["per_attribute"].items():
        table.add_row(name, f"{value:.3f}")
    for axis, value in scores["position_axes"].items():  # which way a wrong start region is wrong
        table.add_row(f"  position {axis}", f"{value:.3f}", style="dim")
    out = Console()
    out.print(table)
    recall, precision = scores["fact_recall"], scores["fact_precision"]
    psnr, iou = scores["recon_psnr"], scores["recon_iou"]
    out.print(
        f"fact recall [bold]{recall:.3f}[/], precision [bold]{precision:.3f}[/]; blind reconstruction "
        f"PSNR [bold]{psnr:.1f} dB[/], IoU [bold]{iou:.3f}[/]; "
        f"{scores['captioned']}/{scores['clips']} clips captioned in {scores['seconds']:.0f} s"
    )
    out.print(f"report: [bold]{scores['report']}[/]")


@app.command()
def distill(
    pairs: Annotated[
        str, typer.Option(help="'world': the synthetic world's ground truth; or a run folder: its captions")
    ],
    out: Annotated[Path, typer.Option(help="the student's HF folder (must not exist or be empty)")],
    preset: Annotated[
        str, typer.Option(help="student size: tiny (~2 M parameters) or small (~9 M)")
    ] = "tiny",
    family: Annotated[
        str,
        typer.Option(
            help="student architecture: qwen3_vl (learned absolute positions in its vision tower: it learns "
            "where things are) or qwen2_5_vl"
        ),
    ] = "qwen3_vl",
    steps: Annotated[int | None, typer.Option(min=1, help="optimizer steps (reproducible length)")] = None,
    minutes: Annotated[
        float | None, typer.Option(help="time budget; the run stops at whichever is first")
    ] = None,
    seed: Annotated[int, typer.Option(help="same seed, same world clips, same initial weights")] = 0,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="override a setting, e.g. --set world_clips=500: init (go on from a student folder), lr, "
            "batch_size, threads, device (cuda: train on a GPU), digit_weight, grounding_weight (teach a "
            "head to look at the object described; world pairs), dense_weight (teach the visual tokens to "
            "say what they show; world pairs), patch_size (8: a new student's vision tower cuts 8-px "
            "patches), freeze_positions, ... (all of them: DistillConfig in "
            "trainer/distill/config.py)",
        ),
    ] = None,
) -> None:
    """Train a small Qwen-VL captioner (servable by vLLM and transformers) on (clip, teacher caption)
    pairs, through the same frames, prompt, processor and chat template it will be served with. Score it
    afterwards with: dataengine eval-captions --recipe demo --set caption.engine.model=OUT"""
    from trainer.distill import DistillConfig
    from trainer.distill import distill as run_distill

    settings: dict[str, Any] = {
        "pairs": pairs, "preset": preset, "family": family, "seed": seed, "max_steps": steps,
    }  # fmt: skip
    if minutes is not None or steps is None:
        settings["minutes"] = (
            minutes if minutes is not None else DistillConfig.model_fields["minutes"].default
        )
    else:
        settings["minutes"] = None
    try:
        config = apply_overrides(DistillConfig(**settings), overrides or [])
        result = run_distill(config, out)
    except (ConfigError, ValidationError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(
        f"student {result.out}: {result.steps} steps on {result.pairs} pairs "
        f"in {result.seconds / 60:.1f} min, final loss {result.final_loss:.4f}; "
        f"loss curve {result.out / 'loss_curve.png'}"
    )


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


@app.command("train-vae")
def train_vae(
    out: Annotated[Path, typer.Option(help="the VAE folder to write (must not exist or be empty)")],
    minutes: Annotated[
        float | None, typer.Option(help="training-loop budget (default 12; data preparation comes on top)")
    ] = None,
    seed: Annotated[int, typer.Option(help="same seed, same training clips, init and data order")] = 0,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a setting, e.g. --set max_steps=500 --set arch.z_dim=8"),
    ] = None,
) -> None:
    """Train a small Wan video autoencoder (diffusers AutoencoderKLWan: 4x spatial, 4x temporal by default)
    on world clips and the sample footage, on one CPU thread; prints the held-out PSNRs. The shipped
    builtin:world-vae is the defaults (40 min): dataengine train-vae --out /tmp/world-vae, then copy the
    folder to dataengine/assets/world-vae"""
    from trainer.vae import VAETrainConfig
    from trainer.vae import train_vae as run_train_vae

    settings: dict[str, Any] = {"seed": seed}
    if minutes is not None:
        settings["minutes"] = minutes
    config = apply_overrides(VAETrainConfig(**settings), overrides or [])
    require_ffmpeg()
    result = run_train_vae(config, out, log=console.print)
    psnr = ", ".join(f"{k} {'-' if v is None else f'{v:.2f} dB'}" for k, v in result.psnr_db.items())
    console.print(
        f"VAE {result.out_dir}: {result.steps} steps in {result.seconds / 60:.1f} min, train L1 "
        f"{result.loss:.4f}; held-out PSNR {psnr}\nuse it: VAEConfig(kind='wan', model='{result.out_dir}')"
    )
