"""The console entry point: every command registered, configuration mistakes mapped to exit code 2."""

from __future__ import annotations

import os

from pydantic import ValidationError

# Importing the command modules registers their commands on ``app``, in this order in --help.
from dataengine.cli import data, serve, train  # noqa: F401
from dataengine.cli.app import app, console
from dataengine.config import ConfigError


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
