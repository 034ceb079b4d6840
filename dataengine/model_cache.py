"""Model folders the project builds itself, cached on disk and built atomically.

A folder appears only complete: it is written in a temporary sibling and renamed in one step, so concurrent
builders (two pytest processes, two workers) never see or leave a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dataengine.config import ConfigError


def cache_root(root: Path | None = None) -> Path:
    """``root``, else ``$DATAENGINE_CACHE``, else ``~/.cache/dataengine/models``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("DATAENGINE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dataengine" / "models"


def cache_key(recipe: str) -> str:
    """Twelve hex digits naming a build recipe (builder version, config, ...)."""
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


class OutputExistsError(ConfigError, FileExistsError):
    """An output folder that already has content: choose another, or remove it."""


def require_empty(out_dir: Path) -> None:
    """Refuse an output folder with content. Commands that train call it before any work, so that minutes
    of training are never lost to a folder ``build_folder`` refuses at the end."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise OutputExistsError(
            f"{out_dir} exists and is not empty: choose another output folder or remove it"
        )


def build_folder(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` into a temporary sibling of ``out_dir``, then rename it to ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` has content, before the build or (another process) by its end.
    """
    out_dir = Path(out_dir)
    require_empty(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write(tmp)
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp is owner-only; a cache is read by other users too
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.replace(out_dir)  # atomic; fails if out_dir gained content meanwhile
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} was completed by another process") from error
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def cached_folder(target: Path, build: Callable[[Path], Path]) -> Path:
    """``target`` if it is complete (has ``config.json``), else ``build(target)``; a lost race is fine."""
    if (target / "config.json").is_file():  # folders appear only complete (one rename)
        return target
    try:
        return build(target)
    except FileExistsError:
        return target  # another caller finished first; its build is identical and ours is gone


class ModelUnavailableError(OSError):
    """A model named by a config can be found neither as a local folder nor through a reachable model hub;
    the message names the model and how to point the config at a local copy."""


@contextmanager
def loading(model: str, key: str) -> Iterator[None]:
    """Load ``model`` inside this block: an ``OSError`` from its loader (no such folder, no hub, no network,
    a gated repo) becomes a ``ModelUnavailableError`` that names the config ``key`` to point elsewhere.

    Raises:
        ModelUnavailableError: the model's files could not be read or fetched.
    """
    try:
        yield
    except ModelUnavailableError:
        raise
    except OSError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ModelUnavailableError(
            f"cannot load {model!r} ({reason}); copy the model to a folder this machine can read and "
            f"--set {key}=/path/to/it, or make its hub reachable (HF_ENDPOINT, HF_TOKEN)"
        ) from exc
