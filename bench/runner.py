"""The Ray runner: CPU-stage scaling over workers, the caption engine's busy fraction, memory vs input count.

    .venv/bin/python bench/runner.py             # 32 videos, 8 videos, 10/100/1000 inputs, best of 3, ~5 min
    .venv/bin/python bench/runner.py --quick     # 8 videos, 4 videos, 10/100 inputs, ~1.5 min
    .venv/bin/python bench/runner.py --parts scaling busy --repeat 5 --json

One local Ray instance sized to this machine (``init_ray(None, None)``) serves every part, in this process.

* scaling: the decode step of the ``demo`` recipe on a ``Pool`` of 1 and then 2 workers (``num_cpus=1``
  each, ``DecodeConfig.threads=1`` so that one ffmpeg decodes on one core and the workers, not ffmpeg's
  own threads, are what scales) over the clips of ``--scaling-videos`` synthetic 320x240 videos, probed and
  split in this process first (untimed). ours: clips/s from the moment every worker is set up (and has
  decoded one warm-up batch) to the last result, so worker start-up is excluded; a fresh pool per run,
  alternating which size goes first, best of ``--repeat``. ffmpeg: the very same ffmpeg passes with null
  outputs (``DecodeStage.null_command``, same batches) run by 1 and then 2 concurrent processes: what the
  machine allows. scaling = 2/1 clips/s; goal: ours >= 1.8. ``ffmpeg`` scaling is the speed of light: on
  a machine whose own 2-process scaling is below 1.8 the goal cannot be met, and ours/ffmpeg is the share
  of the machine's scaling the pool keeps.
* busy: a full ``Runner`` run of the ``demo`` recipe over ``--busy-videos`` synthetic 320x240 videos.
  busy = ``Pool.busy_fraction()``: seconds inside ``process_batch``, as the workers report them, over
  worker-seconds from the end of each worker's setup to the pool's shutdown; goal: caption >= 0.9. The
  caption pool's idle time is split into head (worker ready -> first caption batch submitted), tail (last
  caption batch collected -> shutdown) and the rest (gaps between batches: starved by decode, held by
  backpressure, Ray's per-call overhead); "steady" is busy seconds over the span from the first batch to
  the last. The runner's progress callback (once per loop turn) notes these times; with one caption worker
  (the demo) they are exact to a loop turn.
* memory: the ``demo`` recipe with cheap captions (``caption.sampling.max_tokens=32``,
  ``caption.max_attempts=1``: the captions fail the quality gate and become caption-stage manifest rows
  with ``status=failed``, which is fine for a memory test) over a list file of ``--memory-inputs`` entries,
  each a distinct symlink to ONE 1 s 64x48 synthetic video (distinct paths are distinct videos). driver:
  this process's peak RSS, sampled every 50 ms in a thread, and its growth over the RSS before the run;
  workers: the peak of the summed RSS of the run's ``ray::StageWorker`` processes (descendants of this
  process), sampled every 250 ms; RSS counts shared pages (libraries, the object store) in every process.
  The driver must stay flat as inputs grow: sources stream in and ``runner.max_queued`` bounds what waits.
  Rows run in the order given, in one process, so each starts from the RSS the previous left.

Timings are reported, never asserted. The machine is small and may be shared: ``spread`` (worst side's
median/best - 1) flags noise; ``--json`` ends with one JSON document holding every number.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray
from common import base_parser, ratio_cell
from rich.console import Console
from rich.table import Table

from dataengine.config import apply_overrides
from dataengine.records import Clip, Failure, Source
from dataengine.shards import read_manifest
from dataengine.stages import DecodeStage, ProbeStage, SplitStage
from dataengine.stages.base import Stage
from dataengine.stages.decode import passes
from dataengine.world.generate import random_spec, synthesize, write_video
from pipelines.local import batched, run_chain
from pipelines.pools import Pool, WorkItem
from pipelines.recipes import RecipeConfig, get_recipe
from pipelines.runner import Counts, Runner, build_stages, check_fits, init_ray

Row = dict[str, Any]
PARTS = ("scaling", "busy", "memory")
MEMORY_OVERRIDES = ["caption.sampling.max_tokens=32", "caption.max_attempts=1"]
_MB = 1e6


# --- scaling: the decode step on 1 vs 2 workers ----------------------------------------------------------


def _scaling_recipe(workers: int) -> RecipeConfig:
    sizes = [f"pools.decode.{key}={workers}" for key in ("min_workers", "max_workers")]
    return apply_overrides(get_recipe("demo"), ["decode.threads=1", "pools.decode.num_cpus=1", *sizes])


def _clips(folder: Path, n_videos: int, recipe: RecipeConfig) -> list[Clip]:
    """The clips of ``n_videos`` synthetic 320x240 videos, probed and split in this process."""
    videos = synthesize(folder, n_videos, seed=7)
    stages: list[Stage[Any, Any]] = [ProbeStage(recipe.probe), SplitStage(recipe.split)]
    results = list(run_chain(stages, [Source.from_uri(v) for v in videos]))
    broken = [r for r in results if isinstance(r, Failure) and r.kind != "dropped"]
    if broken:
        sys.exit(f"bench: probe/split failed: {broken[0].uri}: {broken[0].reason}")
    return [r for r in results if isinstance(r, Clip)]


def _drive(pool: Pool, clips: list[Clip]) -> None:
    """Run ``clips`` through ``pool`` as the runner does, until every result is back; abort on a failure."""
    pool.queue.extend(WorkItem(clip.clip_id, clip, clip) for clip in clips)
    while pool.queue or pool.batches or pool.ready_refs():
        pool.dispatch(None)
        refs = [*pool.batches, *pool.ready_refs()]
        ray.wait(refs, num_returns=1)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            if ref not in pool.batches:
                pool.mark_ready(ref)
                continue
            failed = [r for r in pool.finish(ref).results if isinstance(r, Failure)]
            if failed:
                sys.exit(f"bench: decode failed on {failed[0].uri}: {failed[0].reason}")


def _pool_run(workers: int, clips: list[Clip]) -> float:
    """Wall seconds of a fresh decode pool of ``workers`` over ``clips``, start-up and warm-up excluded."""
    recipe = _scaling_recipe(workers)
    build = functools.partial(build_stages, "decode", recipe)
    pool = Pool("decode", recipe.pools.decode, build, one_to_one=True, max_retries=0)
    try:
        _drive(pool, [])  # every worker set up
        _drive(pool, clips[: workers * recipe.pools.decode.batch_size])  # one warm-up batch each
        start = time.perf_counter()
        _drive(pool, clips)
        return time.perf_counter() - start
    finally:
        pool.shutdown()


def _ffmpeg_run(processes: int, commands: list[list[str]]) -> float:
    def run(cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(processes) as executor:
        list(executor.map(run, commands))
    return time.perf_counter() - start


def _bench_scaling(work: Path, n_videos: int, repeat: int) -> Row:
    recipe = _scaling_recipe(1)
    clips = _clips(work / "scaling", n_videos, recipe)
    stage, size = DecodeStage(recipe.decode), recipe.pools.decode.batch_size
    commands = [stage.null_command(run) for b in batched(clips, size) for run in passes(b, 16)]
    walls: dict[str, list[float]] = {side: [] for side in ("ours1", "ours2", "ffmpeg1", "ffmpeg2")}
    _ffmpeg_run(2, commands)  # warm-up: the page cache holds every video
    for r in range(repeat):
        for n in (1, 2) if r % 2 == 0 else (2, 1):
            walls[f"ours{n}"].append(_pool_run(n, clips))
            walls[f"ffmpeg{n}"].append(_ffmpeg_run(n, commands))
    rate = {side: len(clips) / min(v) for side, v in walls.items()}
    return {
        "videos": n_videos, "clips": len(clips), "ffmpeg_passes": len(commands), "batch_size": size,
        **{f"{side}_clips_s": v for side, v in rate.items()},
        "ours_scaling": rate["ours2"] / rate["ours1"], "ffmpeg_scaling": rate["ffmpeg2"] / rate["ffmpeg1"],
        "spread": max(float(np.median(v)) / min(v) - 1 for v in walls.values()), "walls_s": walls,
    }  # fmt: skip


def _scaling_table(row: Row, repeat: int) -> Table:
    title = f"decode step on a Ray pool, 1 vs 2 workers ({row['clips']} clips of {row['videos']} videos)"
    caption = (
        f"best of {repeat}; clips/s from all workers ready to the last result. ffmpeg: the same passes, "
        "null outputs, 1 or 2 concurrent processes (the machine's own scaling). spread: worst side's "
        "median/best - 1. Goal: ours 2/1 >= 1.8"
    )
    table = Table(title=title, caption=caption)
    for col in ("", "ours clip/s", "ffmpeg clip/s", "ours/ffmpeg", "spread"):
        table.add_column(col, justify="left" if not col else "right")
    for n in (1, 2):
        ours, sol = row[f"ours{n}_clips_s"], row[f"ffmpeg{n}_clips_s"]
        label = f"{n} worker{'s' * (n > 1)} / process{'es' * (n > 1)}"
        table.add_row(label, f"{ours:.1f}", f"{sol:.1f}", f"{ours / sol:.2f}", f"{row['spread']:.0%}")
    ours, sol = row["ours_scaling"], row["ffmpeg_scaling"]
    table.add_row("scaling 2/1", ratio_cell(ours, 1.8), f"{sol:.2f}", f"{ours / sol:.2f}", "")
    return table


# --- busy: the caption pool over a full run -----------------------------------------------------------------


class _CaptionWatch:
    """A progress callback noting when the caption pool became ready, submitted its first batch, and last
    collected one (a change in the caption counts)."""

    def __init__(self) -> None:
        self.ready_at: float | None = None
        self.first_batch_at: float | None = None
        self.last_done_at: float | None = None
        self._done = 0

    def __call__(self, counts: Counts, pools: dict[str, Pool]) -> None:
        now, pool = time.monotonic(), pools["caption"]
        if self.ready_at is None and pool.ready_s() > 0:
            self.ready_at = now - pool.ready_s()
        if self.first_batch_at is None and pool.batches:
            self.first_batch_at = min(batch.started for batch in pool.batches.values())
        done = counts.ok["caption"] + sum(n for (stage, _), n in counts.failed.items() if stage == "caption")
        if done != self._done:
            self._done, self.last_done_at = done, now


def _run(recipe: RecipeConfig, specs: list[str], out: Path, watch: _CaptionWatch | None = None) -> Runner:
    check_fits(recipe)
    runner = Runner(recipe, specs, out, on_progress=watch)
    runner.run()
    return runner


def _bench_busy(work: Path, n_videos: int) -> Row:
    recipe = get_recipe("demo")
    synthesize(work / "busy", n_videos, seed=5)
    watch = _CaptionWatch()
    start, mono_start = time.perf_counter(), time.monotonic()
    runner = _run(recipe, [str(work / "busy")], work / "busy-run", watch)
    wall, end = time.perf_counter() - start, time.monotonic()
    caption, counts = runner.pools["caption"], runner.counts
    head = tail = steady = float("nan")
    if watch.ready_at is not None and watch.first_batch_at is not None and watch.last_done_at is not None:
        head, tail = watch.first_batch_at - watch.ready_at, end - watch.last_done_at
        steady = caption.busy_s / max(watch.last_done_at - watch.first_batch_at, 1e-9)
    pools = {step: {"busy_s": p.busy_s, "ready_s": p.ready_s(), "busy": p.busy_fraction(),
                    "workers": p.peak_workers} for step, p in runner.pools.items()}  # fmt: skip
    return {
        "videos": n_videos, "clips": counts.clips_found, "samples": counts.samples,
        "failures": counts.failures, "wall_s": wall, "clips_s": counts.clips_found / wall,
        "caption_busy": caption.busy_fraction(),
        "caption_ready_after_s": (watch.ready_at or end) - mono_start, "caption_head_s": head,
        "caption_tail_s": tail, "caption_other_idle_s": caption.ready_s() - caption.busy_s - head - tail,
        "caption_steady_busy": steady, "pools": pools,
    }  # fmt: skip


def _busy_table(row: Row) -> Table:
    title = (
        f"demo run, {row['videos']} videos: {row['clips']} clips in {row['wall_s']:.1f} s "
        f"({row['clips_s']:.2f} clip/s; {row['samples']} samples, {row['failures']} failure rows); "
        f"caption worker ready after {row['caption_ready_after_s']:.1f} s"
    )
    caption = (
        "busy: Pool.busy_fraction(), process_batch s / worker s since setup, to shutdown. caption idle: "
        "head (ready -> first batch), tail (last batch -> shutdown), other (gaps, overhead); steady: caption "
        "busy s from its first batch to its last. Goal: caption busy >= 0.9"
    )
    table = Table(title=title, caption=caption)
    for col in ("pool", "workers", "busy s", "ready s", "busy", "head s", "tail s", "other idle s", "steady"):
        table.add_column(col, justify="left" if col == "pool" else "right")
    for step, p in row["pools"].items():
        is_caption = step == "caption"
        extra = [row[f"caption_{k}"] for k in ("head_s", "tail_s", "other_idle_s")] if is_caption else []
        table.add_row(
            step, str(p["workers"]), f"{p['busy_s']:.1f}", f"{p['ready_s']:.1f}",
            ratio_cell(p["busy"], 0.9) if is_caption else f"{p['busy']:.2f}",
            *(f"{v:.1f}" for v in extra), *([f"{row['caption_steady_busy']:.2f}"] if is_caption else []),
        )  # fmt: skip
    return table


# --- memory: driver and worker RSS vs input count ---------------------------------------------------------


def _workers_rss() -> int:
    """Summed RSS of this process's descendants that are stage workers (Ray titles them ray::StageWorker)."""
    total = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith("ray::StageWorker"):
                total += proc.memory_info().rss
        except psutil.NoSuchProcess:  # a worker that exited between the listing and the read
            continue
    return total


class _Peaks:
    """Samples this process's RSS every ``period_s`` and the workers' summed RSS every ``every``-th time, in
    a thread, while in the ``with`` block."""

    def __init__(self, period_s: float = 0.05, every: int = 5) -> None:
        self.period_s, self.every = period_s, every
        self.start = self.driver = psutil.Process().memory_info().rss
        self.workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> _Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me, tick = psutil.Process(), 0
        while not self._stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            if tick % self.every == 0:
                self.workers = max(self.workers, _workers_rss())
            tick += 1
            self._stop.wait(self.period_s)


def _input_list(work: Path, video: Path, n: int) -> Path:
    """A list file of ``n`` distinct symlinks to ``video``: ``n`` distinct sources of one tiny file."""
    links = work / f"links-{n}"
    links.mkdir()
    lines = []
    for i in range(n):
        link = links / f"v{i:05d}.mp4"
        link.symlink_to(video)
        lines.append(f"{link}\n")
    listing = work / f"inputs-{n}.txt"
    listing.write_text("".join(lines))
    return listing


def _bench_memory(work: Path, counts: list[int]) -> list[Row]:
    recipe = apply_overrides(get_recipe("demo"), MEMORY_OVERRIDES)
    spec = random_spec(np.random.default_rng(0), width=64, height=48, max_shots=1, duration_range=(1.0, 1.0))
    video = write_video(spec, work / "tiny.mp4")
    rows = []
    for n in counts:
        listing = _input_list(work, video, n)
        start = time.perf_counter()
        out = work / f"memory-run-{n}"
        with _Peaks() as peaks:
            runner = _run(recipe, [str(listing)], out)
        wall = time.perf_counter() - start
        rows.append({
            "inputs": n, "wall_s": wall, "inputs_s": n / wall, "driver_start_mb": peaks.start / _MB,
            "driver_peak_mb": peaks.driver / _MB, "driver_growth_mb": (peaks.driver - peaks.start) / _MB,
            "workers_peak_mb": peaks.workers / _MB, "manifest_rows": read_manifest(out).num_rows,
            "samples": runner.counts.samples, "failures": runner.counts.failures,
            "failed_by": {f"{stage}/{status}": k for (stage, status), k in runner.counts.failed.items()},
            "max_queued": recipe.runner.max_queued,
        })  # fmt: skip
    return rows


def _memory_table(rows: list[Row]) -> Table:
    title = f"peak memory vs input count (demo, {' '.join(MEMORY_OVERRIDES)}; one 1 s 64x48 video, symlinked)"
    caption = (
        "MB. driver: this process's RSS (start: before the run, peak: every 50 ms, growth: peak - start). "
        "workers: peak of the summed RSS of the stage workers (every 250 ms, shared pages counted in each). "
        "Driver growth should not rise with inputs (backpressure: runner.max_queued)."
    )
    table = Table(title=title, caption=caption)
    cols = ("inputs", "wall s", "inputs/s", "driver start", "driver peak", "driver growth", "workers peak")
    for col in (*cols, "manifest rows", "ok / failed"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["inputs"]), f"{r['wall_s']:.1f}", f"{r['inputs_s']:.1f}", f"{r['driver_start_mb']:,.0f}",
            f"{r['driver_peak_mb']:,.0f}", f"{r['driver_growth_mb']:,.0f}", f"{r['workers_peak_mb']:,.0f}",
            str(r["manifest_rows"]), f"{r['samples']} / {r['failures']}",
        )  # fmt: skip
    return table


# --- main ---------------------------------------------------------------------------------------------------


def _parts(args: Any, work: Path, console: Console) -> Row:
    report: Row = {"quick": args.quick, "repeat": args.repeat}
    for part in args.parts:
        if part == "scaling":
            report[part] = _bench_scaling(work, args.scaling_videos, args.repeat)
            console.print(_scaling_table(report[part], args.repeat))
        elif part == "busy":
            report[part] = _bench_busy(work, args.busy_videos)
            console.print(_busy_table(report[part]))
        else:
            report[part] = _bench_memory(work, args.memory_inputs)
            console.print(_memory_table(report[part]))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    parser.add_argument("--scaling-videos", type=int, help="synthetic videos for scaling (32; quick: 8)")
    parser.add_argument("--busy-videos", type=int, help="synthetic videos for the busy run (8; quick: 4)")
    parser.add_argument(
        "--memory-inputs", type=int, nargs="+", help="input counts (10 100 1000; quick: 10 100)"
    )
    parser.add_argument("--quick", action="store_true", help="the smaller defaults above")
    args = parser.parse_args(argv)
    args.scaling_videos = args.scaling_videos or (8 if args.quick else 32)
    args.busy_videos = args.busy_videos or (4 if args.quick else 8)
    args.memory_inputs = args.memory_inputs or ([10, 100] if args.quick else [10, 100, 1000])
    if args.repeat < 1 or min(args.scaling_videos, args.busy_videos, *args.memory_inputs) < 1:
        parser.error("--repeat, video and input counts must be >= 1")
    console = Console(width=120)
    init_ray(None, None)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
            report = _parts(args, Path(tmp), console)
    finally:
        ray.shutdown()
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
