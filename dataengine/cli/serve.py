"""serve (the REST API) and demo (the whole loop on the embedded default)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dataengine.cli.app import app, console
from dataengine.cli.data import print_inspection
from dataengine.media import require_ffmpeg
from pipelines.recipes import get_recipe


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    recipe: Annotated[str, typer.Option(help="recipe of /v1/captions and the default of jobs")] = "demo",
) -> None:
    """The REST API: POST /v1/captions, /v1/jobs (+ GET, results, DELETE), /healthz, /readyz, /metrics, /docs.
    Settings come from DATAENGINE_* variables: API_KEYS and ALLOWED_ROOTS are required; DATA_DIR,
    DATABASE_URL, MAX_UPLOAD_MB, RAY_ADDRESS, CAPTION_BASE_URL (a vLLM server), ... (see docs/api.md)."""
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
    from pipelines.demo import Demo
    from pipelines.runner import RunError

    require_ffmpeg()
    try:
        demo = Demo(out, n, steps, console, eval_clips=eval_clips, samples=samples, train_recipe=train_recipe)
        demo.run(print_inspection)
    except RunError as exc:
        console.print(f"[bold red]demo failed[/]: {exc}")
        raise typer.Exit(1) from None
