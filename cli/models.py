"""Model commands: distill (a captioner from a teacher's captions), train-vae, eval-captions (caption fidelity
on held-out world clips) and probe-student (inside a distilled captioner)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import render
from cli.app import app
from cli.render import console
from dataengine.config import apply_overrides
from dataengine.media import require_ffmpeg
from pipelines.recipes import get_recipe


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
    config = apply_overrides(DistillConfig(**settings), overrides or [])
    result = run_distill(config, out)
    console.print(
        f"student {result.out}: {result.steps} steps on {result.pairs} pairs "
        f"in {result.seconds / 60:.1f} min, final loss {result.final_loss:.4f}; "
        f"loss curve {result.out / 'loss_curve.png'}"
    )


@app.command("train-vae")
def train_vae(
    out: Annotated[Path, typer.Option(help="the VAE folder to write (must not exist or be empty)")],
    minutes: Annotated[
        float | None, typer.Option(help="training-loop budget (default 40; data preparation comes on top)")
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

    config = apply_overrides(get_recipe(recipe), overrides or [])
    result = eval_captions(config, out, n=n, seed=EVAL_SEED if seed is None else seed)
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=1))
        return
    render.print_fidelity(result.as_json())


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
    render.print_probe_student(result)


@app.command()
def rebuild(
    name: Annotated[str, typer.Argument(help="the model's lineage: world-captioner or world-vae")],
    out: Annotated[
        Path,
        typer.Option(help="one folder per stage goes here; rerun the same command to go on after a crash"),
    ],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="print each stage's settings (where they differ from the defaults)"),
    ] = False,
    minutes_scale: Annotated[
        float, typer.Option(help="smoke runs: every stage's minutes times this (not the shipped model)")
    ] = 1.0,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="smoke runs: at most this many steps a stage, tower warm-up too")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="a setting for every stage, e.g. --set device=cuda (recorded and logged)"),
    ] = None,
) -> None:
    """Rebuild a model this project trained and ships, stage by stage, from its lineage (trainer/lineage.py).
    world-captioner: five distill stages (p8c, p8e, p8f, p8g, p8h), 415 minutes of training at full scale,
    about 505 with each stage's pairs and tower warm-up (2 cores, alone on the machine). world-vae: one
    train-vae stage, 40 minutes, about 43 with its data (1 thread; it fetches the sample footage). Install
    the result from the repository root: rm -rf dataengine/assets/MODEL && cp -r OUT/LAST-STAGE
    dataengine/assets/MODEL; for the captioner then dataengine eval-captions --recipe demo --n 32 --json >
    dataengine/assets/world-captioner/fidelity.json"""
    from trainer.lineage import LINEAGES, changed_settings, full_minutes, plan
    from trainer.lineage import rebuild as run_rebuild

    lineage = LINEAGES.get(name)
    extra = overrides or []
    if dry_run:
        stages = plan(lineage, out, minutes_scale=minutes_scale, max_steps=max_steps, extra=extra)
        for (stage_name, config), stage in zip(stages, lineage.stages, strict=True):
            settings = " ".join(changed_settings(config)) or "the defaults"
            console.print(f"{stage_name} ({stage.trainer}): {settings}", markup=False, highlight=False)
            if stage.note:
                console.print(f"  note: {stage.note}", markup=False, highlight=False)
        console.print(
            f"{name}: {len(stages)} stages, {full_minutes(lineage):g} training minutes at full scale"
        )
        return
    require_ffmpeg()
    final = run_rebuild(
        lineage, out, minutes_scale=minutes_scale, max_steps=max_steps, extra=extra, log=console.print
    )
    commands = "\n".join(f"  {command}" for command in lineage.install_commands(final))
    console.print(f"install it (from the repository root):\n{commands}", markup=False, highlight=False)
