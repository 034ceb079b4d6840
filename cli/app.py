"""The Typer app every command module registers on, and the arguments commands share."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="dataengine",
    help="Data engine for video generation: raw video -> clips -> dense captions -> latents -> shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
Inputs = Annotated[
    list[str],
    typer.Argument(
        help="files, directories, globs, list files (.txt/.jsonl/.parquet), http(s):// or s3:// URIs"
    ),
]
