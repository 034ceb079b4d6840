"""The near-duplicate index (``dataengine.curate.dedup.DuplicateIndex``) at 10^4, 10^5 and 10^6 kept clips.

    .venv/bin/python bench/curation_index.py                  # 10^4, 10^5, 10^6 clips, ~1 min on 2 cores
    .venv/bin/python bench/curation_index.py --sizes 10000 --json

Each clip has 4 random 64-bit frame hashes and a random digest. The index is built twice: from manifest
columns in one go (``from_rows``, what a resume does) and, for up to 10^5 clips, one ``add`` at a time (what
the runner does). Lookups time ``check`` on clips that are not in the index (misses: random hashes) and on
planted near duplicates of kept clips (hits: every frame hash of a kept clip with 0-5 bits flipped, so all 4
frames match within ``max_distance`` and each anchors the kept clip, being within ``anchor_distance``).
Memory: ``nbytes()`` (the index's numpy arrays) and the growth of the process's peak RSS while building
(``resource.getrusage``, so a later, smaller size shows 0). pHash speed: ``phash_frames`` on a 112x200
caption view, per frame.
"""

from __future__ import annotations

import json
import resource
import time
from typing import Any

import numpy as np
from common import base_parser
from rich.console import Console
from rich.table import Table

from dataengine.curate.dedup import DuplicateIndex, NearDupConfig
from dataengine.curate.hashes import phash_frames
from dataengine.records import Fingerprint

HASHES_PER_CLIP = 4
LOOKUPS = 1000  # per kind (hits, misses); under 1 ms a check at 10^6 clips


def _columns(n: int, rng: np.random.Generator) -> tuple[list[str], list[str], list[list[int]]]:
    ids = [f"{i:032x}" for i in range(n)]
    digests = [rng.bytes(16).hex() for _ in range(n)]
    words = rng.integers(0, 2**64, size=(n, HASHES_PER_CLIP), dtype=np.uint64) | np.uint64(1)
    return ids, digests, words.tolist()


def _near_copy(phash: list[int], rng: np.random.Generator) -> tuple[int, ...]:
    flips = [sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, 6)), replace=False)) for _ in phash]
    return tuple(h ^ f for h, f in zip(phash, flips, strict=True))


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _lookups_per_s(index: DuplicateIndex, queries: list[Fingerprint], expect_hit: bool) -> float:
    start = time.perf_counter()
    found = [index.check(f"q{i}", fp) for i, fp in enumerate(queries)]
    elapsed = time.perf_counter() - start
    if any((f is not None) != expect_hit for f in found):
        raise AssertionError(f"{'hits' if expect_hit else 'misses'} decided wrongly")
    return len(queries) / elapsed


def bench_index(
    n: int, config: NearDupConfig | None = None, incremental_up_to: int = 100_000
) -> dict[str, Any]:
    """Build an index of ``n`` clips x 4 random hashes and measure build, lookups and memory."""
    config = config or NearDupConfig()
    rng = np.random.default_rng(n)
    ids, digests, phashes = _columns(n, rng)
    rss_before = _peak_rss_bytes()
    start = time.perf_counter()
    index = DuplicateIndex.from_rows(config, ids, digests, phashes)
    row: dict[str, Any] = {"clips": n, "from_rows_s": time.perf_counter() - start}
    row["rss_growth_mb"] = (_peak_rss_bytes() - rss_before) / 2**20
    row["nbytes_mb"] = index.nbytes() / 2**20
    row["bytes_per_clip"] = index.nbytes() / n
    if n <= incremental_up_to:
        incremental = DuplicateIndex(config)
        start = time.perf_counter()
        for clip_id, digest, phash in zip(ids, digests, phashes, strict=True):
            incremental.add(clip_id, Fingerprint(digest, tuple(phash)))
        row["add_per_s"] = n / (time.perf_counter() - start)
    picks = rng.integers(0, n, size=LOOKUPS)
    hits = [Fingerprint(rng.bytes(16).hex(), _near_copy(phashes[i], rng)) for i in picks]
    _, miss_digests, miss_hashes = _columns(LOOKUPS, rng)
    misses = [Fingerprint(d, tuple(h)) for d, h in zip(miss_digests, miss_hashes, strict=True)]
    row["hit_checks_per_s"] = _lookups_per_s(index, hits, expect_hit=True)
    row["miss_checks_per_s"] = _lookups_per_s(index, misses, expect_hit=False)
    return row


def bench_phash(repeat: int = 3) -> float:
    """Milliseconds per frame of ``phash_frames`` on a caption-sized view (8 frames of 112x200)."""
    frames = np.random.default_rng(0).integers(0, 256, size=(8, 112, 200, 3), dtype=np.uint8)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(50):
            phash_frames(frames, 8)
        best = min(best, (time.perf_counter() - start) / (50 * 8))
    return best * 1000


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated clip counts")
    args = parser.parse_args()
    rows = [bench_index(int(n)) for n in args.sizes.split(",")]
    phash_ms = bench_phash(args.repeat)
    table = Table(title=f"DuplicateIndex, {NearDupConfig()!r}")
    columns = [
        ("clips", "{:,}"),
        ("from_rows_s", "{:.2f}"),
        ("add_per_s", "{:,.0f}"),
        ("hit_checks_per_s", "{:,.0f}"),
        ("miss_checks_per_s", "{:,.0f}"),
        ("nbytes_mb", "{:.1f}"),
        ("bytes_per_clip", "{:.0f}"),
        ("rss_growth_mb", "{:.0f}"),
    ]
    for name, _ in columns:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*(fmt.format(row[name]) if name in row else "-" for name, fmt in columns))
    console = Console()
    console.print(table)
    console.print(f"phash_frames: {phash_ms:.3f} ms per frame (112x200 caption view)")
    if args.json:
        print(json.dumps({"index": rows, "phash_ms_per_frame": phash_ms}))


if __name__ == "__main__":
    main()
