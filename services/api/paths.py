"""Confinement of what clients name: local paths must resolve (symlinks and ``..`` followed) inside an allowed
root, URIs must use an allowed scheme. ``confine`` checks what a request names; ``confinement`` carries the
same rule into runs, for what those names lead to (list entries, walked files, symlinks)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse


class RejectedError(ValueError):
    """A path or URI the API refuses; the message says why (never where the roots are)."""


def confine(spec: str, roots: list[Path], schemes: set[str]) -> str:
    """``spec`` as the runner should see it: an absolute local path inside a root, or an allowed URI.

    Raises:
        RejectedError: an empty spec, a scheme not on the allowlist, or a path outside every root.
    """
    if not spec or "\x00" in spec:
        raise RejectedError("empty path or NUL byte")
    scheme = urlparse(spec).scheme.lower()
    if len(scheme) > 1:  # one letter: a Windows drive, not a scheme
        if scheme not in schemes:
            raise RejectedError(f"scheme {scheme!r} is not allowed (allowed: {', '.join(sorted(schemes))})")
        if scheme != "file":
            return spec
        spec = urlparse(spec).path
    elif "file" not in schemes:
        raise RejectedError("local paths are not allowed")
    resolved = Path(spec).expanduser().resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise RejectedError(f"{spec!r} is outside the allowed roots")
    return str(resolved)


def confinement(roots: Iterable[Path], schemes: Iterable[str]) -> list[str]:
    """Recipe overrides (``key=json``) that hold a run to ``roots`` and ``schemes`` where it expands its
    inputs (``inputs``) and where it fetches and probes them (``probe.fetch``)."""
    values = {"allowed_roots": [str(root) for root in roots], "allowed_schemes": sorted(schemes)}
    return [
        f"{section}.{key}={json.dumps(value)}"
        for section in ("inputs", "probe.fetch")
        for key, value in values.items()
    ]
