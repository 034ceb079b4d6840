"""``dataengine run`` end to end: check the config against the run folder, start Ray, run, report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray
from rich.console import Console

from pipelines.errors import RunError
from pipelines.recipes import RecipeConfig
from pipelines.report import PROGRESS_JSON, LiveProgress, ProgressFile, check_resume, summary, write_run_json
from pipelines.runner import Counts, Runner, check_fits, init_ray


def launch_run(
    recipe: RecipeConfig, specs: list[str], out_dir: Path, address: str | None, force: bool, console: Console
) -> bool:
    """Run ``recipe`` over ``specs`` into ``out_dir``; False (after saying why) on a run-level error.

    Raises:
        ConfigError: the recipe does not fit the cluster, or ``out_dir`` holds a run of another recipe.
    """
    check_resume(out_dir, recipe, force)
    init_ray(address, recipe.runner.ray_num_cpus)
    started = time.time()
    runner = Runner(recipe, specs, out_dir)
    try:
        check_fits(recipe)
        with LiveProgress(console) as live:
            snapshot = ProgressFile(out_dir / PROGRESS_JSON)

            def on_progress(counts: Counts, pools: dict[str, Any]) -> None:
                live.update(counts, pools)
                snapshot.write(counts)

            runner.on_progress = on_progress
            counts = runner.run()
            snapshot.write(counts, force=True)
    except RunError as exc:
        console.print(f"[bold red]run failed[/]: {exc}")
        if out_dir.is_dir():
            write_run_json(out_dir, recipe, specs, runner.counts, runner.pools, started, "failed", str(exc))
        return False
    finally:
        ray.shutdown()
    write_run_json(out_dir, recipe, specs, counts, runner.pools, started, "completed")
    _report(console, out_dir, counts, runner, started)
    return True


def _report(console: Console, out_dir: Path, counts: Counts, runner: Runner, started: float) -> None:
    console.print(summary(out_dir, counts, runner.pools, time.time() - started))
    if counts.resumed_clips:
        console.print(f"resumed: {counts.resumed_clips} clips were already done in {out_dir}")
    for name in ("shards", "manifest", "run.json"):
        console.print(f"{name:9} {out_dir / name}")
    console.print(f"look at it: [bold]dataengine inspect {out_dir}[/]")
