"""serve: the REST API (caption requests and batch jobs) under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import app
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
