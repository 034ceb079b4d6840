"""demo: the whole loop on the embedded default; the orchestration is ``demo_flow``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import render
from cli.app import app
from cli.render import console
from dataengine.media import require_ffmpeg


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
            "thousands of steps on few hundred clips, where prompt adherence rises; docs/caption-fidelity.md)"
        ),
    ] = "demo",
) -> None:
    """The whole loop on the embedded default (no GPU, no model hub): synthetic world videos with ground truth
    and real footage from a PyPI wheel -> `run --recipe demo` (in-process vLLM with the shipped distilled
    captioner, the shipped world VAE, MiniLM text embeddings, shards) -> `train` the tiny DiT -> `sample`
    clips from held-out world captions -> caption fidelity (`eval-captions`) and prompt adherence of the
    samples -> `inspect`; prints the scores, where everything is and how long each step took. Rerunning it
    resumes; a larger --steps trains further and scores again."""
    from cli.demo_flow import Demo

    require_ffmpeg()
    demo = Demo(out, n, steps, console, eval_clips=eval_clips, samples=samples, train_recipe=train_recipe)
    demo.run(render.print_inspection)
