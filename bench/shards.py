"""Shard writing and reading vs the speed of light of the same bytes, side by side in one run.

    .venv/bin/python bench/shards.py                 # 256 samples (~1.1 GB of shards), best of 3, ~1 min
    .venv/bin/python bench/shards.py --quick         # 64 samples
    .venv/bin/python bench/shards.py --latent-shape 16,5,32,32 --samples 2048 --repeat 5 --json

Samples look like the engine's: ``latents.npy`` (float16, by default 16x21x60x104: what the Wan VAE makes of
5 s of 480p video at 16 fps), ``txt`` (a dense caption), ``json`` (the structured caption and metadata) and a
``jpg`` preview (random bytes of JPEG size), 100 per shard.

* write, ours: ``ShardWriter`` (webdataset's TarWriter encoding each member, a temporary name, fsync,
  rename, then the parquet manifest). Speed of light: writing the very bytes of the finished tars to new
  files, sequentially, with the same fsync per file.
* read, ours: a plain webdataset loop over the shards (``wds.WebDataset(urls, shardshuffle=False)``, raw
  samples, no decoding), and the same loop with ``.decode()`` for context. Speed of light: ``cat`` of the
  same tars to /dev/null.

Reads run twice: warm (the files the write just made, from the page cache: the software path alone, where
the speed of light is a memory copy) and cold (each file evicted from the page cache with
``posix_fadvise(DONTNEED)`` before every read, on both sides: what a trainer streaming shards from local disk
sees). MB/s counts tar bytes on every side; ratio = ours / speed of light, goal >= 0.8.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from common import base_parser, ratio_cell
from rich.console import Console
from rich.table import Table

from dataengine.shards import ShardConfig, ShardWriter

Row = dict[str, Any]


def _samples(n: int, shape: tuple[int, ...]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        key = f"{i:032x}"
        latents = rng.standard_normal(shape).astype(np.float16)
        caption = "A red circle moves right across a blue checkered background. " * 8
        meta = {"clip_id": key, "fps": 16.0, "size": [256, 256], "structured": {"summary": caption[:200]}}
        sample = {"latents.npy": latents, "txt": caption, "json": meta, "jpg": rng.bytes(20_000)}
        row = {"clip_id": key, "video_id": key[:16], "caption": caption, "latent_shape": list(latents.shape)}
        out.append((key, sample, row))
    return out


def _write_ours(out: Path, samples: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> list[Path]:
    with ShardWriter(out, ShardConfig(max_samples=100)) as writer:
        for key, sample, row in samples:
            writer.write(key, sample, row)
    return [Path(p) for p in writer.written]


def _write_raw(out: Path, blobs: list[bytes]) -> None:
    out.mkdir(parents=True)
    for i, blob in enumerate(blobs):
        with (out / f"{i}.tar").open("wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())


def _cat(urls: list[str]) -> None:
    subprocess.run(["cat", *urls], stdout=subprocess.DEVNULL, check=True)


def _read_loop(urls: list[str], decode: bool) -> int:
    dataset = wds.WebDataset(urls, shardshuffle=False)
    if decode:
        dataset = dataset.decode()
    return sum(1 for _ in dataset)


def _evict(paths: list[str]) -> None:
    """Drop the files' clean pages from the page cache, so the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _bench(work: Path, n: int, shape: tuple[int, ...], repeat: int) -> list[Row]:
    samples = _samples(n, shape)
    shards = _write_ours(work / "ours", samples)  # warm-up; its bytes are what the raw write writes
    blobs = [p.read_bytes() for p in shards]
    walls: dict[str, list[float]] = {k: [] for k in ("write", "raw_write", "read", "read_decode", "cat")}
    for r in range(repeat):
        for side in ("ours", "raw") if r % 2 == 0 else ("raw", "ours"):
            shutil.rmtree(work / side, ignore_errors=True)
            if side == "ours":
                walls["write"].append(_timed(lambda: _write_ours(work / "ours", samples)))
            else:
                walls["raw_write"].append(_timed(lambda: _write_raw(work / "raw", blobs)))
    urls = [str(p) for p in shards]
    walls.update(read_cold=[], cat_cold=[])
    for r in range(repeat):
        for cold in (False, True):
            for side in ("read", "cat") if r % 2 == 0 else ("cat", "read"):
                if cold:
                    _evict(urls)
                reader = (lambda: _read_loop(urls, decode=False)) if side == "read" else (lambda: _cat(urls))
                walls[f"{side}_cold" if cold else side].append(_timed(reader))
        walls["read_decode"].append(_timed(lambda: _read_loop(urls, decode=True)))
    mb = sum(len(b) for b in blobs) / 1e6
    best = {k: min(v) for k, v in walls.items()}
    spread = max(statistics.median(v) / min(v) - 1 for v in walls.values())
    return [
        {"case": "write", "shards": len(shards), "mb": mb, "ours_mb_s": mb / best["write"],
         "sol_mb_s": mb / best["raw_write"], "ratio": best["raw_write"] / best["write"], "spread": spread},
        {"case": "read, page cache", "shards": len(shards), "mb": mb, "ours_mb_s": mb / best["read"],
         "sol_mb_s": mb / best["cat"], "ratio": best["cat"] / best["read"], "spread": spread,
         "decode_mb_s": mb / best["read_decode"]},
        {"case": "read, from disk", "shards": len(shards), "mb": mb, "ours_mb_s": mb / best["read_cold"],
         "sol_mb_s": mb / best["cat_cold"], "ratio": best["cat_cold"] / best["read_cold"], "spread": spread},
    ]  # fmt: skip


def _table(rows: list[Row], repeat: int) -> Table:
    caption = (
        f"best of {repeat}. write sol: the same tar bytes written raw with fsync; "
        "read sol: cat to /dev/null (from disk: both sides evicted from the page cache first); "
        "read decode: the webdataset loop with .decode() (context). "
        "Goal: ratios >= 0.8"
    )
    table = Table(title="shards: ours vs the same bytes", caption=caption)
    for col in ("case", "shards", "MB", "ours MB/s", "sol MB/s", "ratio", "with decode MB/s", "spread"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for row in rows:
        table.add_row(
            row["case"], str(row["shards"]), f"{row['mb']:.0f}", f"{row['ours_mb_s']:,.0f}",
            f"{row['sol_mb_s']:,.0f}", ratio_cell(row["ratio"], 0.8),
            f"{row['decode_mb_s']:,.0f}" if "decode_mb_s" in row else "", f"{row['spread']:.0%}",
        )  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--samples", type=int, default=256, help="samples to write (100 per shard)")
    parser.add_argument(
        "--latent-shape", default="16,21,60,104",
        help="C,T,H,W of each sample's float16 latents (default: Wan VAE, 5 s of 480p at 16 fps, 4.2 MB)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="64 samples")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.samples < 1:
        parser.error("--repeat and --samples must be >= 1")
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        shape = tuple(int(v) for v in args.latent_shape.split(","))
        rows = _bench(Path(tmp), 64 if args.quick else args.samples, shape, args.repeat)
    Console(width=120).print(_table(rows, args.repeat))
    if args.json:
        print(json.dumps({"repeat": args.repeat, "rows": rows}))


if __name__ == "__main__":
    main()
