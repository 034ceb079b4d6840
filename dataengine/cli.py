"""The ``dataengine`` command line. Each command is a thin wrapper over library functions.

dataengine synth --out data/synth --n 8          # procedural videos + ground-truth JSON
dataengine probe data/synth                      # what ffprobe says, or why a file cannot be used
dataengine clips data/synth --out out/clips      # probe -> split -> decode, with a contact sheet
dataengine run data/synth --out out/run          # inputs -> captions -> latents -> shards, on Ray; resumable
dataengine inspect out/run                       # counts, reasons, distributions, an HTML contact sheet
dataengine demo --out out/demo                   # the embedded default, end to end
dataengine eval-captions --recipe demo           # caption fidelity on held-out synthetic-world clips
dataengine distill --pairs world --out DIR       # train a small captioner from a teacher's captions
dataengine probe-student DIR                     # inside a distilled captioner: what it knows, what it sees
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from dataengine import synth as synth_lib
from dataengine.config import ConfigError
from dataengine.inputs import InputsConfig, iter_sources
from dataengine.media import require_ffmpeg
from dataengine.records import Failure, Video
from dataengine.stages import DecodeConfig, ProbeStage, SplitConfig
from dataengine.stages.caption import CaptionConfig
from pipelines.captioning import caption_video, with_engine
from pipelines.clips import ClipsReport, extract_clips
from pipelines.recipes import apply_overrides, get_recipe

app = typer.Typer(
    name="dataengine",
    help="Data engine for video generation: raw video -> clips -> dense captions -> latents -> shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
Inputs = Annotated[
    list[str],
    typer.Argument(
        help="files, directories, globs, list files (.txt/.jsonl/.parquet), http(s):// or s3:// URIs"
    ),
]


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="folder for video_NNN.mp4 + video_NNN.json (ground truth)")],
    n: Annotated[int, typer.Option(min=1, help="how many videos")] = 8,
    seed: Annotated[int, typer.Option(help="same seed, same videos")] = 0,
    width: Annotated[int, typer.Option(min=16)] = 320,
    height: Annotated[int, typer.Option(min=16)] = 240,
    fps: Annotated[int, typer.Option(min=1)] = 24,
    max_shots: Annotated[int, typer.Option(min=1, help="hard cuts per video are at most max_shots - 1")] = 2,
) -> None:
    """Write procedural videos (coloured shapes on known paths, pans, hard cuts) with their ground truth."""
    require_ffmpeg()
    paths = synth_lib.synthesize(out, n, seed=seed, width=width, height=height, fps=fps, max_shots=max_shots)
    console.print(f"wrote {len(paths)} videos and their ground truth to [bold]{out}[/]")


@app.command()
def probe(
    inputs: Inputs,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON record per line instead of a table")
    ] = False,
) -> None:
    """Show what ffprobe reports for each input, or the reason it cannot be used."""
    require_ffmpeg()
    stage = ProbeStage()
    table = Table("source", "size", "fps", "duration", "codec", "status")
    for item in iter_sources(inputs, InputsConfig()):
        result = item if isinstance(item, Failure) else stage.probe(item)
        if as_json:
            print(result.model_dump_json())
        elif isinstance(result, Video):
            p = result.probe
            table.add_row(
                result.uri,
                f"{p.width}x{p.height}",
                f"{p.avg_fps:.2f}{' vfr' if p.is_vfr else ''}",
                f"{p.duration_s:.2f} s",
                f"{p.codec} {p.pix_fmt}",
                "[green]ok[/]",
            )
        else:
            table.add_row(result.uri, "", "", "", "", f"[red]{result.reason}[/]")
    if not as_json:
        Console().print(table)


@app.command()
def clips(
    inputs: Inputs,
    out: Annotated[Path, typer.Option(help="folder for clips.jsonl, failures.jsonl, contact_sheet.jpg")],
    split_mode: Annotated[
        str, typer.Option(help="'scenes' (cut at hard cuts) or 'fixed' (windows)")
    ] = "scenes",
    window_s: Annotated[float, typer.Option(help="window length (fixed mode, and for long shots)")] = 5.0,
    min_clip_s: Annotated[float, typer.Option(help="shorter spans are dropped, with a reason")] = 1.0,
    max_clip_s: Annotated[float, typer.Option(help="longer shots are cut into windows")] = 10.0,
) -> None:
    """Probe, split and decode the inputs; write the clips, the failures and a contact sheet."""
    require_ffmpeg()
    split_cfg = SplitConfig(mode=split_mode, window_s=window_s, min_clip_s=min_clip_s, max_clip_s=max_clip_s)
    _report(_extract(inputs, out, split_cfg, DecodeConfig()))


@app.command()
def caption(
    video: Annotated[str, typer.Argument(help="a video file, or an http(s):// or s3:// URI")],
    recipe: Annotated[
        str, typer.Option(help="named configuration: demo (CPU, tiny built-in VLM), gpu-qwen25vl-7b-wan")
    ] = "demo",
    engine: Annotated[
        str | None,
        typer.Option(
            help="vllm (in-process), openai (a server: --base-url), transformers; default: the recipe's"
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible endpoint for --engine openai, e.g. http://127.0.0.1:8000/v1"),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a recipe key, e.g. --set caption.sampling.max_tokens=512"),
    ] = None,
    max_windows: Annotated[int, typer.Option(min=1, help="caption at most this many frame windows")] = 8,
) -> None:
    """Caption one video and print one JSON document (caption, short_caption, structured, engine, model,
    prompt_id, timings). Exit code 1 when it cannot be captioned: the JSON says at which stage and why."""
    require_ffmpeg()
    config = apply_overrides(get_recipe(recipe), overrides or [])
    if engine is not None:
        config = with_engine(config, engine, base_url)
    document = caption_video(video, config, max_windows=max_windows)
    print(json.dumps(document, indent=2))
    if "error" in document:
        raise typer.Exit(1)


@app.command()
def run(
    inputs: Inputs,
    out: Annotated[Path, typer.Option(help="run folder: shards/, manifest/, run.json; rerun to resume")],
    recipe: Annotated[
        str, typer.Option(help="named configuration: demo (this machine), cpu-small, gpu-qwen25vl-7b-wan")
    ] = "demo",
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a recipe key, e.g. --set pools.decode.max_workers=4"),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, else a local instance)")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="resume even though the recipe differs from run.json's")
    ] = False,
) -> None:
    """Probe, split, decode, caption and encode the inputs on Ray actor pools; write WebDataset shards, a
    parquet manifest (one row per clip, failures with stage and reason) and run.json.

    Rerunning the same command on the same --out resumes: finished clips are skipped, nothing is written
    twice, even after kill -9. Exit code 0 when the run completes (per-input failures are manifest rows);
    1 for run-level errors (no inputs, unwritable --out, workers that cannot start); 2 for bad configuration.
    """
    from pipelines.launch import launch_run

    require_ffmpeg()
    config = apply_overrides(get_recipe(recipe), overrides or [])
    if not launch_run(config, inputs, out, address, force, console):
        raise typer.Exit(1)


@app.command()
def inspect(
    run_dir: Annotated[Path, typer.Argument(help="the --out folder of dataengine run")],
    samples: Annotated[int, typer.Option(min=1, help="samples on the HTML contact sheet")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="print the numbers as one JSON document")] = False,
    regate: Annotated[
        bool,
        typer.Option(
            help="re-apply today's caption gate to every ok sample's structured caption (reads the "
            "shards' json, captions nothing) and report what it would refuse"
        ),
    ] = False,
    keep_list: Annotated[
        Path | None,
        typer.Option(help="with --regate: write the clip ids the gate keeps here, one per line"),
    ] = None,
    recipe: Annotated[
        str | None, typer.Option(help="whose caption gate (default: the recipe in RUN_DIR/run.json)")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="override a gate threshold, e.g. --set caption.quality.min_mean_logprob=-0.3"
        ),
    ] = None,
) -> None:
    """Counts by status, failure reasons, caption length and clip duration distributions of a run, the
    gate's scores (mean token log-prob, zlib ratio), the ok captions today's gate would refuse, and an HTML
    contact sheet (RUN_DIR/contact_sheet.html) of preview frames with their captions.

    dataengine inspect out/run --regate --keep-list keep.txt   # the full gate again; keep.txt for loaders
    """  # fmt: skip
    from pipelines.inspect_run import inspect_run
    from pipelines.regate import regate_run, write_keep_list

    if keep_list is not None and not regate:
        console.print("[bold red]error[/]: --keep-list needs --regate")
        raise typer.Exit(2)
    gate = _run_gate(run_dir, recipe, overrides or [])
    try:
        found = inspect_run(run_dir, samples, gate)
        again = regate_run(run_dir, gate) if regate else None
    except FileNotFoundError as exc:
        console.print(f"[bold red]error[/]: {exc}")
        raise typer.Exit(1) from None
    if again is not None and keep_list is not None:
        write_keep_list(again, keep_list)
    if as_json:
        doc = found.as_json() | ({"regate": again.as_json()} if again is not None else {})
        print(json.dumps(doc, indent=2))
        return
    _print_inspection(found)
    if again is not None:
        _print_regate(again, keep_list)


def _run_gate(run_dir: Path, recipe: str | None, overrides: list[str]) -> Any:
    """The caption gate of ``recipe``, else of the recipe named in ``run_dir/run.json``, as the code has it
    today, with ``overrides``; the default gate when neither names one."""
    from dataengine.caption.quality import QualityConfig

    run_json = run_dir / "run.json"
    if recipe is None and run_json.exists():
        recipe = json.loads(run_json.read_text()).get("recipe")
    if recipe is None:
        return QualityConfig()
    return apply_overrides(get_recipe(recipe), overrides).caption.quality


def _print_regate(found: Any, keep_list: Path | None) -> None:
    out = Console()
    out.print(f"[bold]today's gate[/] on {found.checked} ok samples: keeps {len(found.keep)}, "
              f"would refuse {len(found.refused)}")  # fmt: skip
    if found.refused:
        table = Table("check", "samples", title="what the gate would refuse")
        for check, n in found.reasons():
            table.add_row(check, str(n))
        out.print(table)
    if keep_list is not None:
        out.print(f"keep-list: [bold]{keep_list}[/] ({len(found.keep)} clip ids)")


def _print_inspection(found: Any) -> None:
    out = Console()
    status = ", ".join(f"{n} {s}" for s, n in sorted(found.by_status.items()))
    out.print(f"[bold]{found.out_dir}[/]: {status}; {found.shards} shards, {found.shard_bytes / 1e6:.1f} MB")
    if found.reasons:
        table = Table("stage", "reason", "clips/videos", title="why clips did not make it")
        for stage, reason, n in found.reasons[:20]:
            table.add_row(stage, reason, str(n))
        out.print(table)
    for title, dist in (
        ("caption length (words)", found.caption_words),
        ("clip duration (s)", found.clip_seconds),
        ("caption mean token log-prob", found.caption_mean_logprob),
        ("caption zlib compression ratio", found.caption_compression),
    ):
        if dist is None:
            continue
        table = Table("range", "clips", "", title=f"{title}: p10 {dist.p10:.3g}, median {dist.p50:.3g}, "
                      f"p90 {dist.p90:.3g} (min {dist.min:.3g}, max {dist.max:.3g})")  # fmt: skip
        top = max(c for _, _, c in dist.histogram) or 1
        for lo, hi, count in dist.histogram:
            table.add_row(f"{lo:7.3g} - {hi:7.3g}", str(count), "█" * round(30 * count / top))
        out.print(table)
    if found.suspicious:
        out.print(f"[bold yellow]{len(found.suspicious)} ok captions today's gate would refuse[/] "
                  "(dataengine inspect RUN --regate --keep-list keep.txt to drop them):")  # fmt: skip
        for clip_id, reason in found.suspicious[:5]:
            out.print(f"  {clip_id}: {reason}")
    if found.sheet is not None:
        out.print(f"contact sheet: [bold]{found.sheet}[/]")


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
    from trainer.recipes import get_train_recipe
    from trainer.sample import loss_curve
    from trainer.train import METRICS, Trainer

    config = apply_overrides(get_train_recipe(recipe), [*(overrides or []), f"steps={steps}"])
    config = config.model_copy(update={"data": config.data.model_copy(update={"shards": shards})})
    if ray_workers:
        from trainer.ray_train import train_on_ray

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
    from dataengine.caption.probe import probe_student

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
            "dataengine/caption/distill.py)",
        ),
    ] = None,
) -> None:
    """Train a small Qwen-VL captioner (servable by vLLM and transformers) on (clip, teacher caption)
    pairs, through the same frames, prompt, processor and chat template it will be served with. Score it
    afterwards with: dataengine eval-captions --recipe demo --set caption.engine.model=OUT"""
    from dataengine.caption.distill import DistillConfig
    from dataengine.caption.distill import distill as run_distill

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
    from trainer.sample import sample_video

    shape = tuple(int(v) for v in latent_shape.split(",")) if latent_shape else None
    if shape is not None and len(shape) != 4:
        raise ConfigError(f"--latent-shape needs C,T,H,W; got {latent_shape!r}")
    result = sample_video(ckpt, prompt, out, shape, steps=steps, cfg_scale=cfg, seed=seed)
    console.print(f"video {result.video} ({'x'.join(map(str, result.frames_shape))})\nframes {result.sheet}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    recipe: Annotated[str, typer.Option(help="recipe of /v1/captions and the default of jobs")] = "demo",
) -> None:
    """The REST API: POST /v1/captions, /v1/jobs (+ GET, results, DELETE), /healthz, /readyz, /metrics, /docs.
    Settings come from DATAENGINE_* variables: API_KEYS and ALLOWED_ROOTS are required; DATA_DIR,
    DATABASE_URL, MAX_UPLOAD_MB, RAY_ADDRESS, CAPTION_BASE_URL (a vLLM server), ... (see README)."""
    import uvicorn

    from services.api.app import create_app
    from services.api.settings import Settings

    settings = Settings(recipe=recipe)
    settings.check()
    get_recipe(recipe)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where the demo writes everything")] = Path("out/demo"),
    n: Annotated[int, typer.Option(min=1, help="synthetic videos to make")] = 6,
    steps: Annotated[int, typer.Option(min=1, help="training steps of the tiny DiT")] = 200,
    eval_clips: Annotated[int, typer.Option(min=1, help="held-out world clips for caption fidelity")] = 8,
    samples: Annotated[int, typer.Option(min=1, help="DiT samples scored for prompt adherence")] = 3,
    train_recipe: Annotated[
        str,
        typer.Option(
            help="training recipe of the DiT: demo (tiny, a few hundred steps) or cpu-mini (4 blocks, "
            "thousands of steps on a few hundred clips: where prompt adherence rises; see the README)"
        ),
    ] = "demo",
) -> None:
    """The whole loop on the embedded default (no GPU, no model hub): synthetic world videos with ground truth
    and real footage from a PyPI wheel -> `run --recipe demo` (in-process vLLM with the shipped distilled
    captioner, the shipped world VAE, MiniLM text embeddings, shards) -> `train` the tiny DiT -> `sample`
    clips from held-out world captions -> caption fidelity (`eval-captions`) and prompt adherence of the
    samples -> `inspect`; prints the scores, where everything is and how long each step took. Rerunning it
    resumes; a larger --steps trains further and scores again."""
    from pipelines.demo import Demo
    from pipelines.runner import RunError

    require_ffmpeg()
    try:
        demo = Demo(out, n, steps, console, eval_clips=eval_clips, samples=samples, train_recipe=train_recipe)
        demo.run(_print_inspection)
    except RunError as exc:
        console.print(f"[bold red]demo failed[/]: {exc}")
        raise typer.Exit(1) from None


def _extract(
    inputs: list[str],
    out: Path,
    split_cfg: SplitConfig,
    decode_cfg: DecodeConfig,
    caption_cfg: CaptionConfig | None = None,
) -> ClipsReport:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("clips decoded", total=None)
        return extract_clips(
            inputs,
            out,
            split=split_cfg,
            decode=decode_cfg,
            caption=caption_cfg,
            on_result=lambda r: progress.advance(task, 0 if isinstance(r, Failure) else 1),
        )


def _report(report: ClipsReport) -> None:
    table = Table("what", "count", title="summary")
    table.add_row("videos with clips", str(len(report.videos)))
    table.add_row("clips decoded", str(report.clips))
    if report.captioned:
        table.add_row("clips captioned", str(report.captioned))
    for view, frames in report.frames.items():
        table.add_row(f"frames ({view} view)", str(frames))
    for (stage, kind), count in sorted(report.failures.items()):
        table.add_row(f"{'dropped' if kind == 'dropped' else 'failed'} at {stage}", str(count))
    console.print(table)
    for name, path in report.files.items():
        if path.exists():
            console.print(f"{name:18} {path}")
    if report.failures:
        console.print(f"reasons: [bold]jq -r .reason {report.files['failures.jsonl']} | sort | uniq -c[/]")


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
    from dataengine.encode.train_vae import VAETrainConfig
    from dataengine.encode.train_vae import train_vae as run_train_vae

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


def main() -> None:
    """Console entry point: configuration mistakes end with a one-paragraph message and exit code 2."""
    # Results go to stdout (e.g. caption JSON); vLLM's logs go to stderr, errors only (VLLM_LOGGING_LEVEL).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        app()
    except (ValidationError, ConfigError) as exc:
        console.print(f"[bold red]configuration error[/]: {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
