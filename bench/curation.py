"""Curation vs captioning per clip on the same clips, and the near-duplicate index at scale.

    .venv/bin/python bench/curation.py                 # 8 world videos, best of 3, index to 10^6, ~4 min
    .venv/bin/python bench/curation.py --quick         # 4 videos, index at 10^4 and 10^5, ~1.5 min
    .venv/bin/python bench/curation.py --skip-caption  # no vLLM engine: curation and the index only

Clips are synthetic world videos probed, split and decoded as the ``demo`` recipe does (untimed). Timed,
best of ``--repeat``, per clip:

* ``model-free``: ``FilterStage.process_batch`` with the demo's filters and no embedder: every model-free
  score (motion, black/blank/fade/flash, frozen, sharpness, borders), the gates, the digest and the four
  perceptual hashes, i.e. what runs on every clip before captioning.
* ``+ embed``: the same with the demo's clip embedder (the model-free descriptor).
* ``+ OCR``: the same with the text detector on (RapidOCR's det model on 3 frames; the demo has it off).
* ``caption``: the demo's ``CaptionStage`` (the shipped world captioner on the in-process vLLM engine) on the
  same clips, engine setup excluded.

It also says how many of the world clips the demo's filters drop (the demo keeps every good world clip:
``--n-videos 120 --skip-caption --repeat 1`` checks about 180 of them).

Speed of light for the filters: one pass over every pixel that every score must read (luma conversion and a
resize to the 128 px working size, per frame, in OpenCV); ratio = sol / model-free. The issue's goal: the
model-free filters and hashing cost <= 5% of the demo captioner per clip.

Index: ``bench/curation_index.py``: build, lookups/s (hits and misses) and memory at 10^4..10^6 clips of
four 64-bit hashes each. Peak RSS growth reads 0 once the caption engine has raised the process's peak: run
``bench/curation_index.py`` alone for it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
from common import base_parser, ratio_cell
from curation_index import bench_index
from rich.console import Console
from rich.table import Table

from dataengine.curate.filters import Bound, FiltersConfig
from dataengine.records import DecodedClip, Failure, Source
from dataengine.stages import DecodeStage, ProbeStage, SplitStage, Stage
from dataengine.stages.filter import FilterStage
from dataengine.world.generate import synthesize
from pipelines.local import run_chain
from pipelines.recipes import demo


def decoded_clips(n_videos: int, root: Path) -> list[DecodedClip]:
    recipe = demo()
    videos = synthesize(root, n_videos, seed=20261206, max_shots=2)
    stages: list[Stage[Any, Any]] = [
        ProbeStage(recipe.probe),
        SplitStage(recipe.split),
        DecodeStage(recipe.decode),
    ]
    return [c for c in run_chain(stages, [Source.from_uri(v) for v in videos]) if isinstance(c, DecodedClip)]


def best_per_clip(work: Callable[[], object], n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best / n


def sol(clips: list[DecodedClip]) -> None:
    for clip in clips:
        for frame in clip.views["caption"].frames_THWC:
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            h, w = gray.shape
            cv2.resize(
                gray, (round(w * 128 / min(h, w)), round(h * 128 / min(h, w))), interpolation=cv2.INTER_AREA
            )


def curation_cases(clips: list[DecodedClip], repeat: int) -> dict[str, float]:
    base = demo().filters
    configs = {
        "model-free": base.model_copy(update={"embed": None}),
        "+ embed": base,
        "+ OCR": base.model_copy(
            update={"text_area": Bound(max=0.05), "text_frames": Bound(score_only=True)}
        ),
    }
    times = {"sol": best_per_clip(lambda: sol(clips), len(clips), repeat)}
    for name, config in configs.items():
        stage = FilterStage(FiltersConfig.model_validate(config.model_dump()))
        stage.setup()
        stage.process_batch(clips[:1])  # warm-up: first calls allocate
        times[name] = best_per_clip(lambda s=stage: s.process_batch(clips), len(clips), repeat)  # type: ignore[misc]
        stage.teardown()
    return times


def demo_drops(clips: list[DecodedClip]) -> list[str]:
    """The reasons the demo's filters give for dropping any of ``clips`` (world clips: none should go)."""
    with FilterStage(demo().filters) as stage:
        return [r.reason for r in stage.process_batch(clips) if isinstance(r, Failure)]


def caption_per_clip(clips: list[DecodedClip], repeat: int) -> float:
    from dataengine.caption.engines import build_engine
    from dataengine.stages.caption import CaptionStage

    config = demo().caption
    engine = build_engine(config.engine)
    engine.setup()
    try:
        stage = CaptionStage(config, engine)
        stage.process_batch(clips[:1])
        return best_per_clip(lambda: stage.process_batch(clips), len(clips), max(1, repeat - 1))
    finally:
        engine.teardown()


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--n-videos", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="4 videos; index at 10^4 and 10^5 only")
    parser.add_argument("--skip-caption", action="store_true", help="no caption stage (no vLLM engine)")
    args = parser.parse_args()
    n_videos = 4 if args.quick else args.n_videos
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        clips = decoded_clips(n_videos, Path(tmp))
        times = curation_cases(clips, args.repeat)
        drops = demo_drops(clips)
        caption = None if args.skip_caption else caption_per_clip(clips, args.repeat)
    table = Table("what", "ms/clip", "vs caption", "sol/ours", title=f"curation on {len(clips)} world clips")
    for name, seconds in times.items():
        share = "" if caption is None else f"{100 * seconds / caption:.2f}%"
        ratio = "" if name == "sol" else ratio_cell(times["sol"] / seconds, 0.2)
        table.add_row(name, f"{1000 * seconds:.2f}", share, ratio)
    if caption is not None:
        table.add_row("caption (demo)", f"{1000 * caption:.1f}", "100%", "")
    console.print(table)
    console.print(f"the demo's filters drop {len(drops)} of these {len(clips)} world clips", *drops[:5])
    sizes = (10**4, 10**5) if args.quick else (10**4, 10**5, 10**6)
    index = [bench_index(n) for n in sizes]
    names = {
        "clips": "clips",
        "from_rows_s": "from_rows s",
        "add_per_s": "adds/s",
        "hit_checks_per_s": "hit checks/s",
        "miss_checks_per_s": "miss checks/s",
        "nbytes_mb": "index MB",
        "bytes_per_clip": "bytes/clip",
        "rss_growth_mb": "peak RSS growth MB",
    }
    rows = Table(*names.values(), title="near-duplicate index (4 hashes per clip)")
    for found in index:
        rows.add_row(*(f"{found[k]:,.4g}" if k in found else "-" for k in names))
    console.print(rows)
    if args.json:
        doc: dict[str, Any] = {
            "clips": len(clips),
            "per_clip_s": times,
            "caption_s": caption,
            "demo_drops": drops,
            "index": index,
        }
        print(json.dumps(doc))


if __name__ == "__main__":
    main()
