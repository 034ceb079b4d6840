"""Data commands: synth, probe, clips, caption, run, inspect. Each hands over to ``pipelines`` or the library;
``render`` draws the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli import render
from cli.app import Inputs, app
from cli.render import console
from dataengine.config import ConfigError, apply_overrides
from dataengine.inputs import InputsConfig, iter_sources
from dataengine.media import require_ffmpeg
from dataengine.records import Failure
from dataengine.stages import DecodeConfig, ProbeStage, SplitConfig
from dataengine.stages.caption import CaptionConfig
from dataengine.storage import Store
from dataengine.world.generate import synthesize
from pipelines.captioning import caption_video, with_engine
from pipelines.clips import ClipsReport, extract_clips
from pipelines.recipes import get_recipe


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
    paths = synthesize(out, n, seed=seed, width=width, height=height, fps=fps, max_shots=max_shots)
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
    results = []
    for item in iter_sources(inputs, InputsConfig()):
        result = item if isinstance(item, Failure) else stage.probe(item)
        if as_json:
            print(result.model_dump_json(), flush=True)  # one line per input as it is probed
        else:
            results.append(result)
    if not as_json:
        render.print_probe(results)


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
    render.print_clips_report(_extract(inputs, out, split_cfg, DecodeConfig()))


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
    out: Annotated[
        str,
        typer.Option(
            help="where the run goes: a folder or a URL (s3://bucket/run, gs://...): shards/, manifest/, "
            "run.json; rerun to resume"
        ),
    ],
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
        bool, typer.Option(help="resume even though the recipe or partition count differs from run.json's")
    ] = False,
    partition: Annotated[
        str | None,
        typer.Option(
            metavar="I/N",
            callback=lambda value: parse_partition(value) and value,  # a usage error before any work
            help="take the I-th of N slices of the inputs (0 <= I < N); N drivers, one per I, write one run "
            "into the same --out",
        ),
    ] = None,
) -> None:
    """Probe, split, decode, curate, caption and encode the inputs on Ray actor pools; write WebDataset
    shards, a parquet manifest (one row per clip, failures with stage and reason) and run.json.

    Before captioning, the filters score every clip (motion, black/blank frames, fades, flashes, blur,
    borders, text, size gates; each score a manifest column) and drop what breaks a bound, and duplicates of
    clips already kept are dropped: --set filters.motion.min=0.01, --set filters.text_area.score_only=true,
    --set dedup.enabled=false, --set filters.enabled=false (docs/curation.md).

    --out is a folder or an object-storage URL (s3://bucket/run; credentials as fsspec finds them). Rerunning
    the same command on the same --out resumes: finished clips are skipped, nothing is written twice, even
    after kill -9. --partition I/N splits the inputs between N drivers writing one run (run one command per
    I; each keeps its attempts in runs/pIIofNN.json). Exit code 0 when the run completes (per-input failures
    are manifest rows); 1 for run-level errors (no inputs, unwritable --out, workers that cannot start); 2
    for bad configuration.
    """
    from pipelines.launch import launch_run

    require_ffmpeg()
    config = apply_overrides(get_recipe(recipe), overrides or [])
    if not launch_run(config, inputs, out, address, force, console, parse_partition(partition)):
        raise typer.Exit(1)  # launch_run has printed why


def parse_partition(value: str | None) -> tuple[int, int] | None:
    """``"I/N"`` as ``(I, N)``; None for None.

    Raises:
        typer.BadParameter: not two integers with 0 <= I < N (a usage error: exit code 2).
    """
    if value is None:
        return None
    index, _, count = value.partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit()) or int(index) >= int(count):
        raise typer.BadParameter(
            f"{value!r} is not I/N with 0 <= I < N (e.g. 0/4 for the first of four drivers)",
            param_hint="'--partition'",
        )
    return int(index), int(count)


@app.command()
def inspect(
    run_dir: Annotated[str, typer.Argument(help="the --out of dataengine run: a folder or a URL (s3://...)")],
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
    """Counts by status and by shard bucket (latent shape), failure reasons, caption length and clip
    duration distributions of a run, the gate's scores (mean token log-prob, zlib ratio), the ok captions
    today's gate would refuse, and an HTML contact sheet (RUN_DIR/contact_sheet.html) of preview frames with
    their captions. RUN_DIR may be a URL (s3://bucket/run): the pictures are written there too.

    dataengine inspect out/run --regate --keep-list keep.txt   # the full gate again; keep.txt for loaders
    """  # fmt: skip
    from pipelines.inspect_run import inspect_run
    from pipelines.regate import regate_run, write_keep_list

    if keep_list is not None and not regate:
        raise ConfigError("--keep-list needs --regate")
    store = Store(run_dir)
    gate = _run_gate(store, recipe, overrides or [])
    found = inspect_run(store, samples, gate)
    again = regate_run(store, gate) if regate else None
    if again is not None and keep_list is not None:
        write_keep_list(again, keep_list)
    if as_json:
        doc = found.as_json() | ({"regate": again.as_json()} if again is not None else {})
        print(json.dumps(doc, indent=2))
        return
    render.print_inspection(found)
    _print_layout(found.buckets, found.partitions)
    if again is not None:
        render.print_regate(again, keep_list)


def _print_layout(buckets: dict[str, int], partitions: dict[str, str]) -> None:
    """Samples per shard bucket (latent shape) and each partition's last status, when the run has them."""
    if buckets:
        table = Table("bucket", "samples", title="samples per shard bucket")
        for bucket, n in buckets.items():
            table.add_row(bucket, str(n))
        render.stdout.print(table)
    if partitions:
        render.stdout.print("partitions: " + ", ".join(f"{p} {s}" for p, s in partitions.items()))


def _run_gate(store: Store, recipe: str | None, overrides: list[str]) -> Any:
    """The caption gate of ``recipe``, else of the recipe named in the run's ``run.json``, as the code has it
    today, with ``overrides``; the default gate when neither names one."""
    from dataengine.caption.quality import QualityConfig

    if recipe is None and store.exists("run.json"):
        recipe = json.loads(store.read_bytes("run.json")).get("recipe")
    if recipe is None:
        return QualityConfig()
    return apply_overrides(get_recipe(recipe), overrides).caption.quality


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
