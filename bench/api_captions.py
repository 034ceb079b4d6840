"""/v1/captions with 1, 4 and 16 concurrent clients against the same engine's offline batch on the same clips.

    .venv/bin/python bench/api.py --parts captions               # 16 clips, ~3 min on 2 cores
    .venv/bin/python bench/api.py --parts captions --clips 32

The clips are synthetic world videos (1 shot, 320x240, the demo captioner's world), named by URI.

Offline (the speed of light): the recipe's caption stage with its in-process vLLM engine in this process,
every clip probed and decoded in turn (``prepare_video``, as the server does), then captioned in batches of
``CAPTION_MAX_BATCH``. Two rates: decoded and captioned = clips / (decode + caption wall), and captioned only
= clips / caption wall (the engine alone; the served path decodes too, on the same cores). The engine is
torn down before the server starts.

Served: ``dataengine serve`` (one uvicorn worker, the same recipe and engine) on 127.0.0.1. Each of C
clients posts ``{"uri": ...}`` in a closed loop over the clips, after one untimed warm-up request each;
clips/s = requests / wall; latency per request; mean batch = clips per engine call (the server's
``dataengine_caption_batch_size``). Goal: served / offline >= 0.8 at 16 clients.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from common import free_port, ratio_cell
from rich.console import Console
from rich.table import Table

from dataengine.stages.caption import CaptionStage
from dataengine.world.generate import synthesize
from pipelines.captioning import prepare_video
from pipelines.recipes import get_recipe

Row = dict[str, Any]
KEY = "bench-key"
CLIENTS = (1, 4, 16)
GOAL = 0.8


def offline(clips: list[str], recipe_name: str, max_batch: int) -> Row:
    """Decode then caption every clip in this process, in batches of ``max_batch``: clips/s."""
    recipe = get_recipe(recipe_name)
    stage = CaptionStage(recipe.caption)
    stage.setup()
    try:
        stage.process_batch([_decoded(clips[0], recipe)])  # warm-up, untimed
        start = time.perf_counter()
        decoded = [_decoded(clip, recipe) for clip in clips]
        decode_s = time.perf_counter() - start
        for i in range(0, len(decoded), max_batch):
            stage.process_batch(decoded[i : i + max_batch])
        wall = time.perf_counter() - start
    finally:
        stage.teardown()
    caption_s = wall - decode_s
    return {"clips_s": len(clips) / wall, "caption_clips_s": len(clips) / caption_s, "decode_s": decode_s,
            "caption_s": caption_s, "wall_s": wall}  # fmt: skip


def _decoded(uri: str, recipe: Any) -> Any:
    prepared = prepare_video(uri, recipe)
    assert prepared.decoded is not None, prepared.error
    return prepared.decoded


def served(root: Path, clips: list[str], recipe_name: str, max_batch: int, log: Path) -> list[Row]:
    """The API on 127.0.0.1 with C closed-loop clients for each C in CLIENTS: clips/s and latencies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAENGINE_")}
    env.update(
        DATAENGINE_API_KEYS=KEY, DATAENGINE_ALLOWED_ROOTS=str(root), DATAENGINE_DATA_DIR=str(root / "data"),
        DATAENGINE_RUN_JOBS="false", DATAENGINE_RECIPE=recipe_name,
        DATAENGINE_CAPTION_MAX_BATCH=str(max_batch),
    )  # fmt: skip
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        return [_load(url, clips, clients) for clients in CLIENTS]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _load(url: str, clips: list[str], clients: int) -> Row:
    requests = max(len(clips), 2 * clients)
    todo = iter([clips[i % len(clips)] for i in range(requests)])
    seconds: list[float] = []

    def client(warm_up: str) -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=600) as http:
            _caption(http, warm_up)
            barrier.wait()
            for clip in todo:  # shared: each clip goes to whichever client is free
                start = time.perf_counter()
                _caption(http, clip)
                seconds.append(time.perf_counter() - start)

    barrier = threading.Barrier(clients + 1)
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, clips[i % len(clips)]) for i in range(clients)]
        barrier.wait()
        batches = _batches(url)
        start = time.perf_counter()
        for future in futures:
            future.result()
        wall = time.perf_counter() - start
        calls, batched = (after - before for after, before in zip(_batches(url), batches, strict=True))
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"clients": clients, "requests": requests, "clips_s": requests / wall, "p50_s": cuts[49],
            "p99_s": cuts[98], "mean_batch": batched / max(1.0, calls)}  # fmt: skip


def _batches(url: str) -> tuple[float, float]:
    """The server's engine calls so far and the clips they carried (its Prometheus histogram)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = dict(re.findall(r"^dataengine_caption_batch_size_(count|sum) (\S+)$", text, re.M))
    return float(found.get("count", 0)), float(found.get("sum", 0))


def _caption(http: httpx.Client, clip: str) -> None:
    response = http.post("/v1/captions", json={"uri": clip})
    if response.status_code != 200:
        raise RuntimeError(f"/v1/captions {clip} -> {response.status_code}: {response.text[:300]}")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the API's caption engine was not ready in 600 s")


def bench_captions(n_clips: int, recipe_name: str, max_batch: int) -> tuple[Row, list[Row]]:
    with tempfile.TemporaryDirectory(prefix="bench-captions-") as tmp:
        root = Path(tmp)
        clips = [str(p) for p in synthesize(root / "videos", n_clips, seed=11, max_shots=1)]
        base = offline(clips, recipe_name, max_batch)
        rows = served(root, clips, recipe_name, max_batch, root / "server.log")
    for row in rows:
        row["ratio"] = row["clips_s"] / base["clips_s"]
        row["ratio_engine"] = row["clips_s"] / base["caption_clips_s"]
    return base, rows


def captions_table(base: Row, rows: list[Row], n_clips: int, max_batch: int) -> Table:
    caption = (
        f"{n_clips} world clips. Offline, one process: decode {base['decode_s']:.1f} s, then caption in "
        f"batches of {max_batch} {base['caption_s']:.1f} s: {base['clips_s']:.2f} clips/s decoded and "
        "captioned, "
        f"{base['caption_clips_s']:.2f} clips/s captioned only (the engine's speed of light). Served: one "
        f"uvicorn worker, closed-loop clients posting URIs (the server decodes, then batches up to "
        f"{max_batch}). {os.cpu_count()} cores shared by server and clients. Goal: >= {GOAL} at 16 clients"
    )
    table = Table(title="api: /v1/captions vs the same engine's offline batch", caption=caption)
    columns = ("clients", "requests", "clips/s", "p50 s", "p99 s", "mean batch", "vs offline decode+caption",
               "vs offline caption only")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            str(row["clients"]), str(row["requests"]), f"{row['clips_s']:.2f}", f"{row['p50_s']:.2f}",
            f"{row['p99_s']:.2f}", f"{row['mean_batch']:.1f}", ratio_cell(row["ratio"], GOAL),
            ratio_cell(row["ratio_engine"], GOAL),
        )  # fmt: skip
    return table


def print_captions(n_clips: int, recipe_name: str, max_batch: int) -> Row:
    base, rows = bench_captions(n_clips, recipe_name, max_batch)
    Console(width=160).print(captions_table(base, rows, n_clips, max_batch))
    return {"offline": base, "served": rows}
