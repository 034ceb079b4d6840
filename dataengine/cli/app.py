"""The Typer app every command module registers on, and what they share: the console, the inputs argument."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

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
