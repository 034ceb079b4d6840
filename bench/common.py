"""What every benchmark in bench/ shares: the command-line skeleton and the coloured ratio cell."""

from __future__ import annotations

import argparse
import socket


def base_parser(doc: str | None, default_repeat: int = 3) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark has: --repeat and --json."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--repeat", type=int, default=default_repeat, help="timed runs per side; the best is reported"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line holding every number")
    return parser


def ratio_cell(value: object, goal: float) -> str:
    """A ratio to the speed of light for a rich table: green when it meets ``goal``, red when not."""
    assert isinstance(value, float)
    return f"[{'green' if value >= goal else 'red'}]{value:.2f}[/]"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a benchmark starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
