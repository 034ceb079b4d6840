"""``dataengine plan``: a recipe proven at its real shapes on this CPU before anyone pays for a GPU."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from cli.app import app
from cli.render import console
from dataengine.config import ConfigError, apply_overrides
from dataengine.plan import (
    CARDS,
    BudgetError,
    StagePlan,
    StageRate,
    cluster_estimate,
    human_bytes,
    human_count,
)
from pipelines.plan import plan_caption, plan_encode, plan_filters, plan_text
from pipelines.recipes import RecipeConfig, get_recipe
from trainer.dit.plan import max_batch, plan_train
from trainer.dit.recipes import get_train_recipe

TRAIN_RECIPES = {"demo": "demo", "cpu-small": "cpu-mini", "gpu-qwen25vl-7b-wan": "gpu-dit-b"}


@app.command()
def plan(
    recipe: Annotated[
        str, typer.Option(help="the data recipe: demo, cpu-small, gpu-qwen25vl-7b-wan")
    ] = "demo",
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a recipe key, e.g. --set decode.views.caption.max_frames=64"),
    ] = None,
    train_overrides: Annotated[
        list[str] | None,
        typer.Option("--train-set", help="override a training-recipe key, e.g. data.batch_size=8"),
    ] = None,
    train_recipe: Annotated[
        str | None,
        typer.Option(
            help="the training recipe (default: demo's demo, cpu-small's cpu-mini, gpu's gpu-dit-b)"
        ),
    ] = None,
    layers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="language-model layers and DiT blocks built and run here (the rest is derived); default: "
            "all for the builtin models, 2 layers of a hub VLM, 1 DiT block for latents over 4096 positions",
        ),
    ] = None,
    source: Annotated[str, typer.Option(metavar="WxH", help="the source videos' frame size")] = "1920x1080",
    gpus: Annotated[int | None, typer.Option(min=1, help="estimate clips per hour on this many GPUs")] = None,
    gpu: Annotated[str, typer.Option(help=f"the card of the estimate: {', '.join(CARDS)}")] = "h100",
    efficiency: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="share of the card's peak FLOP/s (or bandwidth) reached")
    ] = 0.4,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as one JSON document")] = False,
) -> None:
    """Build every model the recipe names at its real architecture (random weights, no hub) and push one
    clip of the recipe's real shapes through every stage here: the caption processor's token arithmetic and
    the prompt against max_model_len, the VAE on the latent view, the text encoder, and the DiT's forward and
    backward on that latent and text. Prints per stage shapes, tokens, parameters, peak memory measured here
    and estimated on a GPU, and FLOPs per clip, each number with where it came from (docs/plan.md).

    A broken budget (a prompt over max_model_len, a latent the DiT's patching refuses, a step over the
    card's memory with --gpus) stops with exit code 2 and the override that fixes it.

    \b
    dataengine plan --recipe demo                                  # seconds
    dataengine plan --recipe gpu-qwen25vl-7b-wan --gpus 64 --gpu h100   # a few minutes
    dataengine plan --recipe gpu-qwen25vl-7b-wan --set decode.views.caption.max_frames=64
    """
    if gpu not in CARDS:
        raise ConfigError(f"--gpu {gpu!r}: choose one of {', '.join(CARDS)}")
    width, height = _size(source)
    config = apply_overrides(get_recipe(recipe), overrides or [])
    training = apply_overrides(
        get_train_recipe(train_recipe or TRAIN_RECIPES.get(recipe, "demo")), train_overrides or []
    )
    with console.status("caption: processor arithmetic, prompt budget, the VLM at its real architecture"):
        caption = plan_caption(config, layers=layers if layers else _cut(config), source=(width, height))
    with console.status("text encoder and VAE at the recipe's real shapes"):
        text, encode = plan_text(config), plan_encode(config)
    latent = _shape(_fact(encode, "latent shape"))
    text_tokens, text_dim = int(_fact(text, "text tokens")), int(_fact(text, "text dim"))
    trains = []
    with console.status(f"the DiT of {training.name}: forward and backward on that latent and text"):
        depth = layers or (1 if math.prod(latent[1:]) > 4096 else None)
        trains.append(plan_train(training, latent, text_tokens, text_dim, "video", depth))
        if any(phase.image_ratio > 0 for phase in training.data.curriculum) and latent[1] > 1:
            image = (latent[0], 1, latent[2], latent[3])
            trains.append(plan_train(training, image, text_tokens, text_dim, "image", depth))
    plans = [*plan_filters(config), caption, text, encode, *trains]
    refusals = _card_refusals(trains, gpu, training.data.batch_size) if gpus else []
    if as_json:
        stages = [asdict(p) for p in plans]
        document: dict[str, object] = {"recipe": config.name, "train_recipe": training.name, "stages": stages}
        if gpus:
            rates = cluster_estimate(plans, CARDS[gpu], gpus, efficiency)
            document["cluster_estimate"] = {
                "gpus": gpus, "gpu": gpu, "efficiency": efficiency, "stages": [asdict(r) for r in rates],
                "bound_by": min(rates, key=_rate).stage,
            }  # fmt: skip
        print(json.dumps(document))
    else:
        console.print(_stages_table(plans, config.name, training.name))
        console.print(_facts_table(plans))
        for note in (n for p in plans for n in p.notes):
            console.print(f"[dim]- {note}[/]")
        if gpus:
            console.print(_cluster_table(plans, gpus, gpu, efficiency))
    if refusals:  # after the tables: what was measured stays on screen
        raise refusals[0]


def _rate(rate: StageRate) -> float:
    return rate.clips_per_hour


def _cut(config: RecipeConfig) -> int | None:
    """All layers of a builtin captioner (small); 2 of a hub VLM (a 7B in float32 would not fit here)."""
    return None if config.caption.engine.model.startswith("builtin:") else 2


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--source {text!r}: give the frame size as WxH, e.g. 1920x1080") from None
    if width < 16 or height < 16:
        raise ConfigError(f"--source {text!r}: frames of at least 16x16")
    return width, height


def _fact(plan: StagePlan, name: str) -> str:
    for fact in plan.facts:
        if fact.name == name:
            return fact.value
    raise AssertionError(f"the {plan.stage} plan reports no {name!r}: {[f.name for f in plan.facts]}")


def _shape(text: str) -> tuple[int, int, int, int]:
    c, t, h, w = (int(v) for v in text.split("x"))
    return c, t, h, w


def _card_refusals(trains: list[StagePlan], gpu: str, batch: int) -> list[BudgetError]:
    """A BudgetError for each training shape whose step does not fit the card, with the batch that does."""
    card, refusals = CARDS[gpu], []
    for plan in trains:
        if plan.gpu_bytes is not None and plan.gpu_bytes > card.memory_bytes:
            fits = max_batch(plan, plan.params, card.memory_bytes, batch)
            fix = (
                f"--train-set data.batch_size={fits} (with optim.accum_steps to keep the batch), or "
                "--train-set model.grad_checkpointing=true, or smaller latents (decode.views.latents)"
                if fits
                else "smaller latents (decode.views.latents), --train-set model.grad_checkpointing=true, "
                "or a smaller preset"
            )
            need = (
                f"a step of data.batch_size={batch} needs ~{human_bytes(plan.gpu_bytes)} (estimate) on a "
                f"{human_bytes(card.memory_bytes)} card"
            )
            refusals.append(BudgetError(plan.stage, f"the {card.name}'s memory", need, fix))
    return refusals


def _stages_table(plans: list[StagePlan], recipe: str, training: str) -> Table:
    table = Table(title=f"plan: {recipe} (training: {training}), one clip at the recipe's real shapes")
    for col in ("stage", "model", "params", "peak here", "GPU est.", "FLOPs/clip", "out/clip"):
        table.add_column(col, justify="left" if col in ("stage", "model") else "right")
    for p in plans:
        table.add_row(
            p.stage, p.model, human_count(p.params), human_bytes(p.peak_bytes_here), human_bytes(p.gpu_bytes),
            f"{p.flops_per_clip:.3g}", human_bytes(p.bytes_out_per_clip),
        )  # fmt: skip
    return table


def _facts_table(plans: list[StagePlan]) -> Table:
    table = Table(title="every number and where it came from")
    for col in ("stage", "what", "value", "source"):
        table.add_column(col)
    for p in plans:
        for f in p.facts:
            table.add_row(p.stage, f.name, f.value, f.source)
    return table


def _cluster_table(plans: list[StagePlan], gpus: int, gpu: str, efficiency: float) -> Table:
    card = CARDS[gpu]
    rates = cluster_estimate(plans, card, gpus, efficiency)
    slowest = min(rates, key=_rate)
    together = gpus * 3600 / sum(gpus * 3600 / r.clips_per_hour for r in rates)
    caption = (
        f"ESTIMATE: {gpus} x {card.name} at {efficiency:.0%} of peak bf16 FLOP/s (or of HBM bandwidth where "
        f"a stage moves more than it computes), each stage alone on all {gpus}; no input pipeline, network "
        f"or scheduling. The run is bound by {slowest.stage}; every stage on the same GPUs in turn: "
        f"{together:,.0f} clips/h"
    )
    table = Table(title="cluster estimate", caption=caption)
    for col in ("stage", "clips/hour", "bound by", "fits one card"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in rates:
        table.add_row(r.stage, f"{r.clips_per_hour:,.0f}", r.bound, "yes" if r.fits else "[red]no[/]")
    return table
