"""Rules the source tree keeps (also run by ``make lint``): layers go one way, no cycles, small files.

The layer and cycle contracts live in pyproject.toml ``[tool.importlinter]``; this runs them, and checks
directly what a library user relies on: importing any library module pulls in none of the packages
built on top of it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dataengine", "pipelines", "trainer", "services", "cli")
MAX_LINES = 500


def test_importing_the_library_imports_none_of_the_layers_above_it() -> None:
    script = """
import pkgutil, sys, importlib
import dataengine
for module in pkgutil.walk_packages(dataengine.__path__, "dataengine."):
    importlib.import_module(module.name)
above = sorted(m for m in sys.modules if m.split(".")[0] in {"pipelines", "trainer", "services", "cli"})
print(len([m for m in sys.modules if m.startswith("dataengine")]), above)
"""
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    imported, above = done.stdout.split(" ", 1)
    assert int(imported) > 40, "walked too few library modules: is the package importable?"
    assert above.strip() == "[]", f"the library imports layers above it: {above}"


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if not lint_imports.exists():
        pytest.skip("import-linter is not installed (make setup installs it)")
    done = subprocess.run([str(lint_imports)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout[-3000:]


def test_no_source_file_is_over_the_size_budget() -> None:
    sizes = {
        path.relative_to(ROOT): len(path.read_text().splitlines())
        for package in (*PACKAGES, "bench")
        for path in (ROOT / package).rglob("*.py")
    }
    over = {str(path): n for path, n in sizes.items() if n > MAX_LINES}
    assert not over, f"files over {MAX_LINES} lines (split them by what they do): {over}"


@pytest.mark.parametrize("flavor", ["cpu", "cuda"])
def test_the_images_carry_every_package(flavor: str) -> None:
    """The k8s manifests run these images: a package left out of one is an import error on the cluster."""
    dockerfile = (ROOT / "docker" / f"Dockerfile.{flavor}").read_text()
    allowed = (ROOT / "docker" / f"Dockerfile.{flavor}.dockerignore").read_text().splitlines()
    for package in PACKAGES:
        assert f"COPY {package} /app/{package}" in dockerfile, f"Dockerfile.{flavor} does not copy {package}/"
        assert f"!{package}/" in allowed, f"Dockerfile.{flavor}.dockerignore leaves {package}/ out"


def test_no_private_name_is_imported_from_another_module() -> None:
    """ruff's PLC2701 checks this across top-level packages; this also covers modules of one package."""
    found = []
    for package in (*PACKAGES, "bench"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    ours = node.module.split(".")[0] in PACKAGES
                    private = [
                        a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")
                    ]
                    if ours and private:
                        found.append(
                            f"{path.relative_to(ROOT)}: from {node.module} import {', '.join(private)}"
                        )
    assert not found, (
        "private names imported across modules (make them public or keep them home):\n" + "\n".join(found)
    )
