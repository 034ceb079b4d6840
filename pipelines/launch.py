"""``dataengine run`` end to end: check the config against the run's output, start Ray, run, report.

The output is a local folder or an fsspec URL (``s3://bucket/run``), opened as a ``Store`` with the
recipe's storage options for its protocol. With ``partition=(i, n)`` this driver takes the i-th of n slices
of the inputs, and writes its attempts and progress to files of its own (``pipelines.report``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray
from rich.console import Console

from dataengine.storage import Store
from pipelines.errors import RunError
from pipelines.recipes import RecipeConfig
from pipelines.report import (
    RUN_JSON,
    LiveProgress,
    ProgressFile,
    check_resume,
    clear_own_partials,
    progress_name,
    summary,
    write_run_header,
    write_run_json,
)
from pipelines.runner import Counts, Partition, Runner, check_fits, init_ray, output_store


def launch_run(
    recipe: RecipeConfig,
    specs: list[str],
    out: str | Path,
    address: str | None,
    force: bool,
    console: Console,
    partition: Partition | None = None,
) -> bool:
    """Run ``recipe`` over ``specs`` (or slice ``partition`` of them) into ``out``, a folder or a URL;
    False (after saying why) on a run-level error.

    Raises:
        ConfigError: the recipe does not fit the cluster, or ``out`` holds a run of another recipe or
            another partition count.
    """
    store = output_store(recipe, out)
    try:
        check_resume(store, recipe, force, partition)
    except OSError as exc:  # an unreachable endpoint, a missing bucket, no permission
        console.print(
            f"[bold red]run failed[/]: cannot read the run at {store.url}: {exc}; check --out, its "
            "credentials and, for an S3-compatible store, AWS_ENDPOINT_URL"
        )
        return False
    init_ray(address, recipe.runner.ray_num_cpus)
    started = time.time()
    runner = Runner(recipe, specs, store, partition=partition)
    try:
        check_fits(recipe)
        _start(store, recipe, partition)
        with LiveProgress(console) as live:
            snapshot = ProgressFile(store, progress_name(partition))

            def on_progress(counts: Counts, pools: dict[str, Any]) -> None:
                live.update(counts, pools)
                snapshot.write(counts)

            runner.on_progress = on_progress
            counts = runner.run()
            snapshot.write(counts, force=True)
    except RunError as exc:
        console.print(f"[bold red]run failed[/]: {exc}")
        if store.exists():  # nothing to record in an output that could not be written
            write_run_json(
                store, recipe, specs, runner.counts, runner.pools, started, "failed", str(exc), partition
            )
        return False
    finally:
        ray.shutdown()
    written = write_run_json(
        store, recipe, specs, counts, runner.pools, started, "completed", None, partition
    )
    _report(console, store, counts, runner, started, written)
    return True


def _start(store: Store, recipe: RecipeConfig, partition: Partition | None) -> None:
    """Remove what a killed attempt left of this driver's records; for a partition, record what every
    partition shares (``run.json``) before anything else is written."""
    try:
        clear_own_partials(store, partition)
        if partition is not None:
            write_run_header(store, recipe, partition)
    except OSError as exc:
        raise RunError(f"cannot write the run to {store.url}: {exc}; choose a writable --out") from exc


def _report(
    console: Console, store: Store, counts: Counts, runner: Runner, started: float, written: str
) -> None:
    console.print(summary(store, counts, runner.pools, time.time() - started))
    if counts.resumed_clips:
        console.print(f"resumed: {counts.resumed_clips} clips were already done in {store.url}")
    for name in ("shards", "manifest"):
        console.print(f"{name:9} {store.uri(name)}")
    console.print(f"{RUN_JSON:9} {store.uri(RUN_JSON)}")
    if written != store.uri(RUN_JSON):
        console.print(f"partition {written}")
    console.print(f"look at it: [bold]dataengine inspect {store.url}[/]")
