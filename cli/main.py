"""The console entry point: every command registered, and the one map from expected failures to exit codes.

Exit codes (documented in docs/cli.md):

    0    done
    1    the work failed: a run-level error, a missing run folder, a video that could not be captioned
    2    a configuration or usage mistake: unknown recipe or key, invalid value, misspelled flag
    3    something the command needs is not installed or reachable: ffmpeg, a model (no hub, no folder)
    130  interrupted (Ctrl-C)

Every expected failure ends in one readable line on stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os

from pydantic import ValidationError

# Importing the command modules registers their commands on ``app``, in this order in --help.
from cli import data, db, dedup, demo, models, plan, serve, train  # noqa: F401
from cli.app import app
from cli.render import console
from dataengine.config import ConfigError
from dataengine.media import MissingToolError
from dataengine.model_cache import ModelUnavailableError
from pipelines.errors import RunError

EXIT_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (ConfigError, 2, "configuration error"),
    (ValidationError, 2, "configuration error"),
    (MissingToolError, 3, "missing tool"),
    (ModelUnavailableError, 3, "model unavailable"),
    (RunError, 1, "run failed"),
    (FileNotFoundError, 1, "not found"),
    (KeyboardInterrupt, 130, "interrupted"),
)


def exit_code(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and label of an expected failure; None for anything else (a bug)."""
    for kind, code, label in EXIT_CODES:
        if isinstance(exc, kind):
            return code, label
    return None


def main() -> None:
    """Console entry point: run the command; an expected failure prints one line and exits with its code."""
    # Results go to stdout (e.g. caption JSON); vLLM's logs go to stderr, errors only (VLLM_LOGGING_LEVEL).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        app()
    except (Exception, KeyboardInterrupt) as exc:
        known = exit_code(exc)
        if known is None:
            raise
        code, label = known
        console.print(f"[bold red]{label}[/]: {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(code) from None
