"""The run's output path: bytes through the driver, writer actors vs the disk, the resume ledger's memory.

    .venv/bin/python bench/output.py             # 4 videos, 512 samples, ledgers of 10^4/10^5/10^6, ~4 min
    .venv/bin/python bench/output.py --quick     # 128 samples, 1/2 writers, ledgers to 10^5, ~1.5 min
    .venv/bin/python bench/output.py --parts writers --sample-mb 4 --repeat 5 --json

One local Ray instance sized to this machine (``init_ray(None, None)``) serves the driver and writers parts,
in this process; the ledger part runs each measurement in a fresh Python process.

* driver: a full ``Runner`` run of the ``demo`` recipe (its own captioner, no overrides: a caption that fails
  the gate makes no sample) over ``--videos`` synthetic 320x240 videos (``max_shots=2``). ``ray.get`` is
  wrapped in this process (the library is unchanged) to add up the pickled size
  (``ray.cloudpickle.dumps``) of everything it returns, per caller (a pool's ``finish`` or ``mark_ready``,
  ``Writers.finish``). driver B/sample = that sum / samples committed; sample B = the bytes of the run's
  shard tars / samples: what the driver received per sample when it wrote every shard itself. The ratio
  driver / sample is the share of sample bytes still passing the driver; goal ~0 (<= 0.05: what remains are
  the probe's clip records, the statuses and fingerprints, and the committed keys).
* writers: ``--samples`` samples (``latents.npy`` float32 of ~``--sample-mb`` MB, a ``txt``, a ``json``; a
  row with clip_id and latent_shape) made by remote tasks before the clock, so their bytes sit in the object
  store as an encode worker's would. ours (``--writers``): a fresh ``Writers`` (100 samples per shard) into a
  fresh folder, started and warmed first (each writer commits one batch of other samples: a fresh process's
  first manifest commit imports pandas, ~0.3 s once); timed: ``submit`` by 8, ``flush()``, ``ray.wait`` +
  ``finish`` until ``done()`` (every shard and manifest part fsync'ed and renamed). driver writes (before):
  ``ray.get`` of each batch of 8 here and one ``ShardWriter``. MB/s: bytes of the finished tars. Speed of
  light: as many bytes to one new file, 1 MiB writes, fsync, same disk, same run; ratio = MB/s / that. Sides
  alternate order; best of ``--repeat``. On 2 cores more writers need not be faster, and Ray runs workers at
  niceness 15 (the driver at 0): on a shared machine the writers lose CPU the driver would not.
* ledger: for each ``--ledger-sizes`` N, a synthetic run of N ok manifest rows in parts of 1000
  (``MANIFEST_SCHEMA`` via pyarrow; clip ids ``v{i//3:08d}-{i%3}``, a source), without and with fingerprints
  (fp: a random ``frames_digest`` and 4 random ``phash`` values, as ``FiltersConfig.phash_frames``). Each row
  is a fresh process: ``Ledger.read`` (read s), 10^4 ``id in ledger`` (half hits; lookups/s), 10^4 ``mark``
  of new ids (marks/s). peak growth: peak RSS (``VmHWM``, reset by ``/proc/self/clear_refs`` just before the
  read, modules already imported) minus the RSS then; held: RSS at the end minus the same; SQLite: the
  ledger's private folder; index: ``DuplicateIndex.nbytes()``, in memory by design; rows with fp have dedup
  on (``NearDupConfig()``) or off (``enabled=False``; not with --quick). before: the old Python set of the
  same N id strings (``tracemalloc``, same process, after the ledger is closed).

Timings are reported, never asserted. The machine is small and may be shared: ``spread`` (worst side's
median/best - 1) flags noise; ``--json`` ends with one JSON document holding every number.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from common import base_parser, ratio_cell
from rich.console import Console
from rich.table import Table

from dataengine.curate.dedup import NearDupConfig
from dataengine.records import Clip, ProbeInfo
from dataengine.shards import MANIFEST_SCHEMA, ShardConfig, ShardWriter
from dataengine.stages.sample import Sample
from dataengine.storage import Store
from dataengine.world.generate import synthesize
from pipelines.ledger import Ledger
from pipelines.pools import Pool, WorkItem
from pipelines.recipes import get_recipe
from pipelines.runner import Runner, check_fits, init_ray
from pipelines.writers import OutputConfig, Writers, bucket_of

Row = dict[str, Any]
PARTS = ("driver", "writers", "ledger")
_MB = 1e6
_BATCH = 8  # samples per writer call, as an encode batch hands them over
_SHARD = ShardConfig(max_samples=100)


def _tar_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in (folder / "shards").glob("*.tar"))


# --- driver: bytes the driver receives per sample -----------------------------------------------------------


class _Received:
    """Wraps ``ray.get`` in this process: pickled bytes and calls of what it returned, per caller."""

    def __init__(self) -> None:
        self.bytes: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._get = ray.get

    def __call__(self, refs: Any, *args: Any, **kwargs: Any) -> Any:
        result = self._get(refs, *args, **kwargs)
        who = _caller(inspect.currentframe())
        self.bytes[who] += len(ray.cloudpickle.dumps(result))
        self.calls[who] += 1
        return result


def _caller(frame: Any) -> str:
    """``decode pool finish``, ``Writers finish``, ...: the method that called ``ray.get``."""
    caller = frame.f_back
    owner = caller.f_locals.get("self")
    name = f"{owner.step} pool" if isinstance(owner, Pool) else type(owner).__name__
    return f"{name} {caller.f_code.co_name}"


def _bench_driver(work: Path, n_videos: int) -> Row:
    recipe = get_recipe("demo")
    synthesize(work / "videos", n_videos, seed=11, max_shots=2)
    out = work / "driver-run"
    check_fits(recipe)
    received = _Received()
    start = time.perf_counter()
    with mock.patch.object(ray, "get", received):
        counts = Runner(recipe, [str(work / "videos")], out).run()
    wall = time.perf_counter() - start
    if counts.samples == 0:
        sys.exit(f"bench: the demo run made no sample ({counts.failures} failure rows); nothing to divide by")
    driver, tars = sum(received.bytes.values()), _tar_bytes(out)
    return {
        "videos": n_videos, "clips": counts.clips_found, "samples": counts.samples, "shards": counts.shards,
        "failures": counts.failures, "wall_s": wall, "driver_bytes": driver, "tar_bytes": tars,
        "driver_b_per_sample": driver / counts.samples, "sample_b": tars / counts.samples,
        "ratio": driver / tars, "by_caller": {k: {"calls": received.calls[k], "bytes": b}
                                              for k, b in sorted(received.bytes.items())},
    }  # fmt: skip


def _driver_table(row: Row) -> Table:
    title = (
        f"bytes the driver receives: demo run, {row['videos']} videos, {row['clips']} clips -> "
        f"{row['samples']} samples in {row['shards']} shards, {row['failures']} failures, "
        f"{row['wall_s']:.0f} s"
    )
    caption = (
        "ray.get in the driver, pickled size of each result, by caller. sample: shard tar bytes / samples, "
        "what the driver received per sample when it wrote the shards. Goal: driver / sample ~0 (<= 0.05)"
    )
    table = Table(title=title, caption=caption)
    for col in ("what", "calls", "bytes", "B/sample"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for who, v in row["by_caller"].items():
        table.add_row(who, str(v["calls"]), f"{v['bytes']:,}", f"{v['bytes'] / row['samples']:,.0f}")
    n = row["samples"]
    table.add_row("driver, all", "", f"{row['driver_bytes']:,}", f"{row['driver_b_per_sample']:,.0f}")
    table.add_row("sample (shard tars)", "", f"{row['tar_bytes']:,}", f"{row['tar_bytes'] / n:,.0f}")
    colour = "green" if row["ratio"] <= 0.05 else "red"
    table.add_row("driver / sample", "", "", f"[{colour}]{row['ratio']:.4f}[/]")
    return table


# --- writers: samples/s through the writer actors vs the driver writing -------------------------------------

_PROBE = ProbeInfo(
    duration_s=4.0, avg_fps=16.0, r_fps=16.0, n_frames=64, n_frames_exact=True, width=512, height=512,
    rotation=0, codec="h264", pix_fmt="yuv420p", bit_depth=8, is_vfr=False, has_audio=False,
    container="mp4", size_bytes=1,
)  # fmt: skip


def _make_samples(start: int, n: int, frames: int) -> list[Sample]:
    """Samples ``start .. start+n``: float32 latents (16, frames, 32, 32), a caption, a json (in a task)."""
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        key, video = f"v{i // 3:08d}-{i % 3}", f"v{i // 3:08d}"
        latents = rng.standard_normal((16, frames, 32, 32), dtype=np.float32)
        caption = f"Clip {i}: a red circle moves right across a blue checkered background. " * 6
        meta = {"clip_id": key, "fps": 16.0, "size": [512, 512], "structured": {"summary": caption[:200]}}
        row = {"clip_id": key, "video_id": video, "source": f"/data/{video}.mp4", "caption": caption,
               "latent_shape": list(latents.shape)}  # fmt: skip
        clip = Clip(clip_id=key, video_id=video, uri=row["source"], path=row["source"], index=i % 3,
                    start_s=float(i % 3), end_s=i % 3 + 1.0, shot=0, probe=_PROBE)  # fmt: skip
        out.append(Sample(key, {"latents.npy": latents, "txt": caption, "json": meta}, row, clip))
    return out


Batches = list[tuple[list[WorkItem], list[Any]]]  # (work items, sample references) of 8 samples each


def _remote_samples(first: int, n: int, sample_mb: float) -> Batches:
    """Samples ``first .. first+n`` made by remote tasks, in batches."""
    frames = max(1, round(sample_mb * _MB / (16 * 32 * 32 * 4)))
    maker: Any = ray.remote(_make_samples)
    batches = []
    for start in range(first, first + n, _BATCH):
        size = min(_BATCH, first + n - start)
        refs = maker.options(num_returns=size, num_cpus=1).remote(start, size, frames)
        refs = [refs] if size == 1 else list(refs)
        clips = _make_samples(start, size, 1)  # the work items' origins (tiny latents: only the clip is used)
        batches.append(([WorkItem(s.key, s.clip, ref) for s, ref in zip(clips, refs, strict=True)], refs))
    every = [r for _, refs in batches for r in refs]
    ray.wait(every, num_returns=len(every), fetch_local=False)
    return batches


def _drain(writers: Writers, batches: Batches) -> int:
    """Submit ``batches``, flush, and collect until every sample is committed; returns how many were."""
    for items, refs in batches:
        writers.submit(items, refs)
    writers.flush()
    committed = 0
    while not writers.done():
        ready, _ = ray.wait(writers.refs(), num_returns=1)
        committed += len(writers.finish(ready[0])[0])
    return committed


def _run_writers(out: Path, n_writers: int, batches: Batches, warm: Batches) -> tuple[float, int]:
    """Seconds from the first submit to every sample committed, through a fresh set of writer actors, each
    warmed first by one batch of ``warm`` (a fresh process's first manifest commit imports pandas, via
    ``pa.Table.from_pylist``); and the tar bytes of that warm-up."""
    writers = Writers(Store(out), _SHARD, OutputConfig(writers=n_writers), tag="")
    try:
        while refs := writers.refs():  # start-up: every writer ready
            ready, _ = ray.wait(refs, num_returns=len(refs))
            for ref in ready:
                writers.finish(ref)
        _drain(writers, warm[:n_writers])  # one batch each: submit() goes to the least busy writer
        warm_bytes = _tar_bytes(out)
        start = time.perf_counter()
        committed = _drain(writers, batches)
        wall = time.perf_counter() - start
    finally:
        writers.shutdown()
    if committed != sum(len(items) for items, _ in batches):
        sys.exit(f"bench: {committed} samples committed of {sum(len(i) for i, _ in batches)}")
    return wall, warm_bytes


def _run_driver_writes(out: Path, batches: Batches) -> tuple[float, int]:
    """The design before: the driver gets every batch and writes it with one ShardWriter."""
    start = time.perf_counter()
    with ShardWriter(Store(out), _SHARD, "driver") as writer:
        for _, refs in batches:
            for sample in ray.get(refs):
                writer.write(sample.key, sample.members, {**sample.row, "bucket": bucket_of(sample.row)})
    return time.perf_counter() - start, 0


def _run_sequential(out: Path, n_bytes: int) -> float:
    """The disk's speed of light: ``n_bytes`` to one new file in 1 MiB writes, fsync'ed."""
    block = np.random.default_rng(0).bytes(1 << 20)
    start = time.perf_counter()
    with out.open("xb") as f:
        for offset in range(0, n_bytes, len(block)):
            f.write(block[: min(len(block), n_bytes - offset)])
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


def _bench_writers(work: Path, n: int, sample_mb: float, counts: list[int], repeat: int) -> list[Row]:
    batches = _remote_samples(0, n, sample_mb)
    warm = _remote_samples(n, _BATCH * max(counts), sample_mb)
    sides = ["driver", *(f"{c}" for c in counts), "sol"]
    walls: dict[str, list[float]] = {side: [] for side in sides}
    tars: dict[str, int] = {}
    for r in range(repeat):
        for side in sides if r % 2 == 0 else sides[::-1]:
            out = work / f"writers-{side}"
            if side == "sol":
                wall = _run_sequential(work / "sol.bin", tars.get("driver", int(n * sample_mb * _MB)))
                (work / "sol.bin").unlink()
            else:
                ours = side != "driver"
                wall, warm_bytes = (
                    _run_writers(out, int(side), batches, warm) if ours else _run_driver_writes(out, batches)
                )
                tars[side] = _tar_bytes(out) - warm_bytes
                shutil.rmtree(out)
            walls[side].append(wall)
    sol_mb_s = tars["driver"] / _MB / min(walls["sol"])
    rows = []
    for side in sides:
        best, size = min(walls[side]), tars.get(side, tars["driver"])
        rows.append({
            "side": side, "samples": n, "tar_mb": size / _MB, "samples_s": n / best,
            "mb_s": size / _MB / best, "ratio": size / _MB / best / sol_mb_s,
            "spread": statistics.median(walls[side]) / best - 1, "walls_s": walls[side],
        })  # fmt: skip
    return rows


def _writers_table(rows: list[Row], sample_mb: float, repeat: int) -> Table:
    n, mb = rows[0]["samples"], rows[0]["tar_mb"]
    title = f"writing {n} samples of ~{sample_mb:g} MB ({mb:,.0f} MB of tars) to local disk"
    caption = (
        f"best of {repeat}. driver writes: ray.get of each batch of 8 + one "
        "ShardWriter in this process (before). writers: Writers.submit by 8, flush, drain to done(). "
        "speed of light: the same bytes to one file, 1 MiB writes, fsync. ratio = MB/s / speed of light"
    )
    table = Table(title=title, caption=caption)
    for col in ("", "samples/s", "MB/s", "ratio", "spread"):
        table.add_column(col, justify="left" if not col else "right")
    for r in rows:
        side = r["side"]
        label = {"driver": "driver writes (before)", "sol": "sequential write (speed of light)"}.get(
            side, f"{side} writer actor{'s' * (side != '1')}"
        )
        ratio = "1.00" if side == "sol" else ratio_cell(r["ratio"], 0.8)
        table.add_row(label, f"{r['samples_s']:,.0f}", f"{r['mb_s']:,.0f}", ratio, f"{r['spread']:.0%}")
    return table


# --- ledger: driver memory vs ledger size -------------------------------------------------------------------

_PART = 1000  # manifest rows per part
_LOOKUPS = 10_000
_PHASHES = 4  # frame hashes per clip (FiltersConfig.phash_frames)


def _clip_ids(lo: int, hi: int) -> list[str]:
    return [f"v{i // 3:08d}-{i % 3}" for i in range(lo, hi)]


def _write_run(folder: Path, n: int, fingerprints: bool) -> None:
    """A run folder of ``n`` ok manifest rows in parts of 1000 (no shards: the ledger reads the manifest)."""
    (folder / "manifest").mkdir(parents=True)
    rng = np.random.default_rng(n)
    for part, lo in enumerate(range(0, n, _PART)):
        hi = min(lo + _PART, n)
        columns: dict[str, Any] = {
            "clip_id": _clip_ids(lo, hi), "source": [f"/data/v{i // 3:08d}.mp4" for i in range(lo, hi)],
            "status": ["ok"] * (hi - lo), "shard": [f"shard-w00-{part:06d}.tar"] * (hi - lo),
        }  # fmt: skip
        if fingerprints:
            columns["frames_digest"] = [rng.bytes(16).hex() for _ in range(hi - lo)]
            hashes = rng.integers(0, 2**64, size=(hi - lo, _PHASHES), dtype=np.uint64)
            columns["phash"] = pa.array(list(hashes), type=pa.list_(pa.uint64()))
        arrays = [columns.get(f.name, pa.nulls(hi - lo, f.type)) for f in MANIFEST_SCHEMA]
        pq.write_table(
            pa.table(arrays, schema=MANIFEST_SCHEMA), folder / "manifest" / f"shard-{part:06d}.parquet"
        )


def _peak_rss() -> int:
    """This process's peak RSS since the last reset (VmHWM, Linux). Not ``ru_maxrss``: after fork + exec it
    keeps the parent's RSS at the fork, which ``clear_refs`` does not reset."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def _ledger_child(spec: Row) -> Row:
    """In a fresh process: read the ledger, look up and mark ids, then measure the old set of ids."""
    n = spec["n"]
    dedup = NearDupConfig(enabled=spec["dedup"])
    me = psutil.Process()
    rss0 = me.memory_info().rss
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS restarts from now (imports excluded)
    start = time.perf_counter()
    ledger, index = Ledger.read(Store(spec["folder"]), dedup)
    read_s = time.perf_counter() - start
    rss_read = me.memory_info().rss
    rng = np.random.default_rng(0)
    hits = [_clip_ids(int(i), int(i) + 1)[0] for i in rng.integers(0, n, _LOOKUPS // 2)]
    keys = [*hits, *_clip_ids(n, n + _LOOKUPS // 2)]  # then the misses
    order = rng.permutation(len(keys))
    start = time.perf_counter()
    found = sum(keys[i] in ledger for i in order)
    lookup_s = time.perf_counter() - start
    start = time.perf_counter()
    added = sum(ledger.mark(f"m{i:08d}-0") for i in range(_LOOKUPS))
    mark_s = time.perf_counter() - start
    sqlite = sum(p.stat().st_size for p in Path(tempfile.gettempdir()).glob("dataengine-ledger-*/*"))
    peak = _peak_rss()
    rss_end = me.memory_info().rss
    ledger.close()
    if found != len(hits) or added != _LOOKUPS:
        raise RuntimeError(f"ledger answered wrong: {found} hits, {added} marks")
    tracemalloc.start()
    ids = set(_clip_ids(0, n))
    set_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "read_s": read_s, "lookups_s": len(keys) / lookup_s, "marks_s": _LOOKUPS / mark_s,
        "peak_growth_mb": (peak - rss0) / _MB, "held_mb": (rss_end - rss0) / _MB,
        "read_growth_mb": (rss_read - rss0) / _MB, "sqlite_mb": sqlite / _MB,
        "index_mb": index.nbytes() / _MB, "index_clips": len(index), "set_mb": set_bytes / _MB,
        "set_len": len(ids),
    }  # fmt: skip


def _bench_ledger(work: Path, sizes: list[int], dedup_off: bool) -> list[Row]:
    rows = []
    for n in sizes:
        for fingerprints in (False, True):
            folder = work / f"ledger-{n}-{'fp' if fingerprints else 'ids'}"
            start = time.perf_counter()
            _write_run(folder, n, fingerprints)
            write_s = time.perf_counter() - start
            for dedup in (True, False) if fingerprints and dedup_off else (True,):
                tmp = work / "ledger-tmp"
                tmp.mkdir()
                spec = {"folder": str(folder), "n": n, "dedup": dedup}
                cmd = [sys.executable, __file__, "--ledger-child", json.dumps(spec)]
                env = {**os.environ, "TMPDIR": str(tmp)}
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    sys.exit(f"bench: the ledger process failed:\n{done.stderr}")
                shutil.rmtree(tmp)
                variant = f"fp, dedup {'on' if dedup else 'off'}" if fingerprints else "ids only"
                result = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append({"n": n, "variant": variant, "write_s": write_s, **result})
            shutil.rmtree(folder)
    return rows


def _ledger_table(rows: list[Row]) -> Table:
    caption = (
        "MB. a fresh process per row; fp: frames_digest + 4 phash per clip. read: Ledger.read; in/s: 10^4 "
        "lookups (half hits); mark/s: 10^4 new ids. peak: VmHWM - RSS before the read; held: RSS at the end "
        "- before. SQLite: the ledger's file. index: DuplicateIndex.nbytes(), in memory by design. before: a "
        "Python set of the same N ids (tracemalloc), what the driver held until the ledger moved to disk"
    )
    table = Table(title="resume ledger: driver memory vs ledger size", caption=caption)
    cols = ("clips", "variant", "read s", "in/s", "mark/s", "peak", "held", "SQLite", "index", "B/clip")
    for col in (*cols, "before: set"):
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for r in rows:
        per_clip = f"{r['index_mb'] * _MB / r['index_clips']:.0f}" if r["index_clips"] else "-"
        table.add_row(
            f"{r['n']:,}", r["variant"], f"{r['read_s']:.2f}", f"{r['lookups_s']:,.0f}",
            f"{r['marks_s']:,.0f}", f"{r['peak_growth_mb']:.1f}", f"{r['held_mb']:.1f}",
            f"{r['sqlite_mb']:.1f}", f"{r['index_mb']:.1f}", per_clip, f"{r['set_mb']:.1f}",
        )  # fmt: skip
    return table


# --- main ---------------------------------------------------------------------------------------------------


def _parts(args: Any, work: Path, console: Console) -> Row:
    report: Row = {"quick": args.quick, "repeat": args.repeat}
    for part in args.parts:
        report[f"{part}_load"] = load = os.getloadavg()  # the machine may be shared: say how busy it was
        table: Table
        if part == "driver":
            report[part] = _bench_driver(work, args.videos)
            table = _driver_table(report[part])
        elif part == "writers":
            report[part] = _bench_writers(work, args.samples, args.sample_mb, args.writers, args.repeat)
            table = _writers_table(report[part], args.sample_mb, args.repeat)
        else:
            report[part] = _bench_ledger(work, args.ledger_sizes, dedup_off=not args.quick)
            table = _ledger_table(report[part])
        console.print(table, f"load average before this part: {' / '.join(f'{x:.1f}' for x in load)}\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    parser.add_argument("--videos", type=int, default=4, help="synthetic videos for the driver part's run")
    parser.add_argument("--samples", type=int, help="samples for the writers part (512; quick: 128)")
    parser.add_argument("--sample-mb", type=float, default=1.0, help="MB of float32 latents per sample")
    parser.add_argument("--writers", type=int, nargs="+", help="writer actor counts (1 2 4; quick: 1 2)")
    parser.add_argument(
        "--ledger-sizes", type=int, nargs="+", help="manifest rows (10^4 10^5 10^6; quick: 10^4 10^5)"
    )
    parser.add_argument("--quick", action="store_true", help="the smaller defaults above")
    parser.add_argument("--ledger-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ledger_child:
        print(json.dumps(_ledger_child(json.loads(args.ledger_child))))
        return
    args.samples = args.samples or (128 if args.quick else 512)
    args.writers = args.writers or ([1, 2] if args.quick else [1, 2, 4])
    args.ledger_sizes = args.ledger_sizes or ([10**4, 10**5] if args.quick else [10**4, 10**5, 10**6])
    if args.repeat < 1 or min(args.videos, args.samples, *args.writers, *args.ledger_sizes) < 1:
        parser.error("--repeat, --videos, --samples, --writers and --ledger-sizes must be >= 1")
    console = Console(width=120)
    if {"driver", "writers"} & set(args.parts):
        init_ray(None, None)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-output-") as tmp:
            report = _parts(args, Path(tmp), console)
    finally:
        ray.shutdown()
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
