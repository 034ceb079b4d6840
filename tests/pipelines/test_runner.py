"""``dataengine run`` end to end on a local Ray instance with the demo recipe: the real vLLM engine on the
tiny built-in VLM, the tiny Wan VAE and the real MiniLM text encoder, on synthetic and broken inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from dataengine.config import apply_overrides
from dataengine.shards import read_embeddings, read_manifest
from dataengine.storage import Store
from dataengine.world.generate import synthesize
from pipelines.recipes import get_recipe
from pipelines.runner import Counts, Runner, partition_of
from tests.crafted import REFUSALS, ReferenceTrap
from tests.media import make_broken_inputs

pytestmark = pytest.mark.slow

# Small shards so that a run commits several of them, and the kill test can stop it between two commits.
# One decode worker: clips reach the duplicate index in input order, so which of two duplicates is kept is the
# same in every run of these tests (with several workers it may vary; that one of them is kept does not).
# Finished splits are committed after every probe batch, so the kill test finds some to replay. Captions in
# batches of 2: samples reach the writers a few at a time, so the kill lands between two shard commits.
OVERRIDES = [
    "shards.max_samples=2",
    "pools.decode.max_workers=1",
    "pools.caption.batch_size=2",
    "runner.splits_commit_s=0",
]
# Curation cases (tests/curation_cases.py) in the run: three the demo's filters drop, and a clip with a
# re-encoded and a cropped copy, which the duplicate index drops before captioning.
# Copied as 0_moving.mp4, 1_reencoded.mp4, ...: a folder is read in name order, so moving comes first.
CURATION = ("moving", "reencoded", "cropped", "black", "fade", "letterbox")
BROKEN = ("zero_bytes", "random_bytes", "truncated", "missing", "audio_only")


@pytest.fixture(scope="module")
def inputs(
    tmp_path_factory: pytest.TempPathFactory,
    reference_trap: ReferenceTrap,
    curation_cases: dict[str, Path],
) -> list[str]:
    """Synthetic videos (a folder, first), broken files, the crafted files that point elsewhere, and the
    curation cases (a folder, last)."""
    root = tmp_path_factory.mktemp("run_inputs")
    videos = synthesize(root / "videos", 4, seed=11, max_shots=2)  # 320x240: the world the captioner knows
    broken = make_broken_inputs(root / "broken", videos[0])
    crafted = [str(path) for path in reference_trap.inputs.values()] + [reference_trap.remote_url]
    (root / "curation").mkdir()
    for i, name in enumerate(CURATION):
        shutil.copy(curation_cases[name], root / "curation" / f"{i}_{name}.mp4")
    return [str(root / "videos"), *(str(broken[name]) for name in BROKEN), *crafted, str(root / "curation")]


def cli_run(inputs: list[str], out: Path | str, *extra: str, wait: bool = True) -> subprocess.Popen[str]:
    """``dataengine run`` in its own process group (so a test can kill the whole group)."""
    cmd = [sys.executable, "-m", "cli", "run", *inputs, "--out", str(out)]
    cmd += [arg for override in OVERRIDES for arg in ("--set", override)] + list(extra)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    if wait:
        proc.wait(timeout=600)
    return proc


@pytest.fixture(scope="module")
def reference(inputs: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = cli_run(inputs, out)
    output = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, output
    return out


def outcome(out: Path | str) -> set[tuple[Any, ...]]:
    """What a run produced, order aside: one entry per manifest row."""
    rows = read_manifest(out).to_pylist()
    return {(r["clip_id"], r["source"], r["status"], r["stage"]) for r in rows}


def shard_keys(out: Path | str) -> list[str]:
    """Every sample key in the run's shards, read through fsspec (a folder or an s3:// run)."""
    store = Store(out)
    keys: list[str] = []
    for name in store.listdir("shards"):
        with store.fs.open(store.path("shards", name), "rb") as f, tarfile.open(fileobj=f) as tar:
            keys += sorted({m.name.split(".", 1)[0] for m in tar})  # a key once per shard it is in
    return keys


def leftovers(out: Path | str) -> list[str]:
    """Partial files, shards without their manifest part, unfinished uploads: what a crash may leave."""
    store = Store(out)
    names = {d: store.listdir(d) for d in ("shards", "manifest", "embeddings", "splits")}
    hidden = [
        f"{d}/{n}" for d, listed in names.items() for n in listed if n.startswith(".") or "partial" in n
    ]
    manifests = {n.rsplit(".", 1)[0] for n in names["manifest"]}
    orphans = [f"shards/{n}" for n in names["shards"] if n.rsplit(".", 1)[0] not in manifests]
    return hidden + orphans + store.abort_uploads()


def split_sources(out: Path | str) -> list[str]:
    """The sources of every row of the run's committed split parts (a video split twice shows twice)."""
    store = Store(out)
    sources: list[str] = []
    for name in store.listdir("splits"):
        with store.fs.open(store.path("splits", name), "rb") as f:
            sources += pq.read_table(f).column("source").to_pylist()
    return sources


def test_a_run_accounts_for_every_input_and_writes_readable_shards(
    inputs: list[str], reference: Path
) -> None:
    rows = read_manifest(reference).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= 4
    sources = {r["source"] for r in rows}
    videos = sorted(Path(inputs[0]).glob("*.mp4")) + sorted(Path(inputs[-1]).glob("*.mp4"))
    for path in [*videos, *(Path(p) for p in inputs[1:-1])]:
        assert any(s is not None and s.endswith(path.name) for s in sources), f"{path} is not in the manifest"
    failed = {Path(r["source"]).name: r for r in rows if r["status"] == "failed"}
    assert failed["empty.mp4"]["stage"] == "probe" and "empty file" in failed["empty.mp4"]["error"]
    assert "missing file" in failed["never_created.mp4"]["error"]

    assert sorted(shard_keys(reference)) == sorted(r["clip_id"] for r in ok)
    urls = [str(p) for p in sorted((reference / "shards").glob("*.tar"))]
    sample = next(iter(wds.WebDataset(urls, shardshuffle=False).decode()))
    assert {"latents.npy", "txt", "json", "jpg", "text_emb.npy", "text_mask.npy"} <= set(sample)
    assert sample["latents.npy"].ndim == 4 and sample["text_emb.npy"].shape == (256, 384)  # MiniLM per token
    assert sample["text_mask.npy"].shape == (256,) and 0 < sample["text_mask.npy"].sum() < 256
    assert sample["json"]["vae"]["model"] == "builtin:world-vae" and sample["txt"]
    # Shards hold at most 2 samples (shards.max_samples=2), all of one latent shape: their bucket.
    by_shard: dict[str, set[tuple[str, tuple[int, ...]]]] = {}
    for row in ok:
        by_shard.setdefault(row["shard"], set()).add((row["bucket"], tuple(row["latent_shape"])))
    assert sorted(by_shard) == sorted(Path(u).name for u in urls)
    for shard, shapes in by_shard.items():
        (bucket, shape), *others = shapes
        assert not others and bucket in shard and bucket.endswith("x".join(map(str, shape[1:])))
    assert all(sum(r["shard"] == s for r in ok) <= 2 for s in by_shard)
    assert not leftovers(reference)
    split = split_sources(reference)  # one row per video the probe step finished, none twice
    assert len(split) == len(set(split)) and {r["source"] for r in rows if r["clip_id"]} <= set(split)

    run = json.loads((reference / "run.json").read_text())
    assert run["status"] == "completed" and run["recipe"] == "demo"
    assert run["config"]["shards"]["max_samples"] == 2 and "ray" in run["versions"]
    assert run["counts"]["samples_written"] == len(ok) and len(run["attempts"]) == 1


def test_curation_drops_before_captioning_and_every_clip_that_reached_it_has_its_scores(
    reference: Path,
) -> None:
    rows = read_manifest(reference).to_pylist()
    case = {Path(r["source"]).stem[2:]: r for r in rows if "/curation/" in (r["source"] or "")}
    assert set(case) == set(CURATION)
    for name, check in (("black", "black"), ("fade", "fade"), ("letterbox", "active_area")):
        row = case[name]
        assert (row["status"], row["stage"]) == ("dropped", "filter") and row["error"].startswith(f"{check} ")
        assert row[check] is not None and f"(filters.{check}." in row["error"]
    moving = case["moving"]
    assert moving["stage"] != "dedup" and moving["phash"] and moving["frames_digest"]  # it reached captioning
    for copy in ("reencoded", "cropped"):
        row = case[copy]
        assert (row["status"], row["stage"]) == ("dropped", "dedup"), row
        assert row["error"].startswith(f"near duplicate of {moving['clip_id']}") and row["phash"] is None
    # Every clip that reached the filters has its scores, kept or not; only clips past the index have hashes.
    scored = [r for r in rows if r["clip_id"] and r["stage"] not in ("probe", "split", "decode")]
    assert scored and all(r["motion"] is not None or r["short_side"] is not None for r in scored)
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["phash"] and r["edge_sharpness"] is not None for r in ok)
    embeddings = read_embeddings(reference)
    assert sorted(embeddings.column("clip_id").to_pylist()) == sorted(r["clip_id"] for r in ok)
    sample = next(
        iter(
            wds.WebDataset(
                sorted(str(p) for p in (reference / "shards").glob("*.tar")), shardshuffle=False
            ).decode()
        )
    )
    assert sample["clip_emb.npy"].dtype.name == "float32" and "scores" in sample["json"]["curation"]
    run = json.loads((reference / "run.json").read_text())
    assert run["config"]["filters"]["black"]["max"] == 0.5 and run["config"]["dedup"]["enabled"]


def test_inputs_that_point_elsewhere_are_probe_failures_and_what_they_name_is_never_read(
    reference: Path, reference_trap: ReferenceTrap
) -> None:
    rows = read_manifest(reference).to_pylist()
    by_source = {r["source"]: r for r in rows if r["clip_id"] is None}
    specs = {f"file://{path}": name for name, path in reference_trap.inputs.items()}
    specs[reference_trap.remote_url] = "remote"
    for source, name in specs.items():
        row = by_source[source]
        assert row["status"] == "failed" and row["stage"] == "probe" and REFUSALS[name] in row["error"], row
        assert not [r for r in rows if r["source"] == source and r["clip_id"] is not None]
    assert reference_trap.untouched()


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_kill_9_of_the_whole_run_then_rerun_gives_the_uninterrupted_result(
    inputs: list[str], reference: Path, tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    """The same after ``kill -9`` of the driver and every worker, for a local --out and an s3:// one (moto on
    loopback, reached through AWS_ENDPOINT_URL like any S3-compatible store): the rerun skips the committed
    clips and the videos whose split was committed, and ends with the uninterrupted run's rows."""
    out = str(tmp_path / "run") if where == "folder" else f"{request.getfixturevalue('s3_bucket')}/runs/r1"
    store = Store(out)
    proc = cli_run(inputs, out, wait=False)
    deadline = time.monotonic() + 300
    while not [n for n in store.listdir("shards") if n.endswith(".tar")] and proc.poll() is None:
        assert time.monotonic() < deadline, "the run committed no shard in 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    first = outcome(out)
    assert first and first < outcome(reference)  # part-way: something committed, not everything
    split_before = split_sources(out)

    rerun = cli_run(inputs, out)
    assert rerun.returncode == 0, rerun.stdout.read() if rerun.stdout else ""
    assert outcome(out) == outcome(reference)
    keys = shard_keys(out)
    assert len(keys) == len(set(keys))  # nothing written twice
    assert sorted(keys) == sorted(r[0] for r in outcome(out) if r[2] == "ok")  # nothing lost
    assert not leftovers(out)
    run = json.loads(store.read_bytes("run.json"))
    assert len(run["attempts"]) == 1  # the killed one wrote none
    assert run["counts"]["videos_replayed"] > 0 and run["counts"]["writers"] == 2
    split_after = split_sources(out)  # a video whose split was committed is not split again
    assert (
        split_before and len(split_after) == len(set(split_after)) and set(split_before) <= set(split_after)
    )


def test_a_caption_worker_and_a_writer_killed_mid_run_are_replaced_and_their_items_made_again(
    inputs: list[str], reference: Path, tmp_path: Path, ray_local: None
) -> None:
    import ray

    recipe = apply_overrides(get_recipe("demo"), OVERRIDES)
    killed: list[str] = []
    peak_queue = 0

    def kill_once(counts: Counts, pools: dict[str, Any]) -> None:
        nonlocal peak_queue
        peak_queue = max([peak_queue, *(len(p.queue) for p in pools.values())])
        caption = pools["caption"]
        if not killed and caption.batches:
            pid = ray.get(caption.workers[0].ready_ref)
            os.kill(pid, signal.SIGKILL)  # what the OOM killer or a crashing engine does
            killed.append("caption")
        writers = runner.writers
        holding = [s for s in writers.slots if s.pending] if writers is not None and len(killed) == 1 else []
        if holding:  # a writer with samples in its open shard, not committed yet
            pid = ray.get(holding[0].actor.__ray_call__.remote(lambda self: os.getpid()))
            os.kill(pid, signal.SIGKILL)
            killed.append("writer")

    runner = Runner(recipe, inputs[:1], tmp_path / "run", on_progress=kill_once)
    counts = runner.run()
    assert killed == ["caption", "writer"] and runner.pools["caption"].deaths == 1
    assert runner.writers is not None and runner.writers.deaths == 1
    # The killed workers' clips were made again: the same outcome as the uninterrupted reference run on these
    # videos, samples and any refusals of the caption gate alike, each sample once.
    expected = {row for row in outcome(reference) if row[1] is not None and inputs[0] in row[1]}
    assert outcome(tmp_path / "run") == expected
    keys = shard_keys(tmp_path / "run")
    assert sorted(keys) == sorted(row[0] for row in expected if row[2] == "ok") and not leftovers(
        tmp_path / "run"
    )
    assert counts.samples == len(keys) > 0
    assert {row[3] for row in expected if row[2] != "ok"} <= {"caption"}
    assert peak_queue <= recipe.runner.max_queued + recipe.pools.probe.batch_size * 8


def test_two_partitions_write_one_run_that_every_reader_sees_whole(
    inputs: list[str], reference: Path, tmp_path: Path
) -> None:
    """``--partition 0/2`` and ``1/2`` over the same inputs into one --out: each driver takes the videos its
    URIs hash to, names its files apart, and together they make the run one driver makes."""
    out = tmp_path / "run"
    for i in range(2):
        proc = cli_run(inputs[:1], out, "--partition", f"{i}/2")
        assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""
    expected = {row for row in outcome(reference) if row[1] is not None and inputs[0] in row[1]}
    assert outcome(out) == expected
    parts = {name.split("-")[1] for name in Store(out).listdir("manifest")}
    # each driver wrote under its own names, for the videos whose URIs hash to it (the temporary folder's
    # name is in the URIs, so now and then every video lands in one slice and the other driver has none)
    assert parts == {f"p{partition_of(row[1], 2):02d}of02" for row in expected}
    keys = shard_keys(out)
    assert sorted(keys) == sorted(row[0] for row in expected if row[2] == "ok") and not leftovers(out)
    inspect = subprocess.run(
        [sys.executable, "-m", "cli", "inspect", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert sum(json.loads(inspect.stdout)["buckets"].values()) == len(keys)


def test_run_level_errors_exit_non_zero_with_a_message(tmp_path: Path) -> None:
    bad_key = cli_run(["nowhere"], tmp_path / "a", "--set", "pools.caption.gpus=1")
    text = bad_key.stdout.read() if bad_key.stdout else ""
    assert bad_key.returncode == 2 and "unknown key 'pools.caption.gpus'" in text and "num_gpus" in text

    empty = tmp_path / "empty_dir"
    empty.mkdir()
    nothing = cli_run([str(empty)], tmp_path / "b")
    text = nothing.stdout.read() if nothing.stdout else ""
    assert nothing.returncode == 1 and "no inputs found" in text


def test_resuming_with_another_recipe_is_refused(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    proc = cli_run(["nowhere"], out, "--set", "caption.sampling.max_tokens=99")
    text = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 2 and "different config (caption changed)" in text


def test_inspect_prints_the_numbers_and_writes_the_contact_sheet(reference: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "inspect", str(reference), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = json.loads(proc.stdout)
    rows = read_manifest(reference).to_pylist()
    assert found["by_status"] == {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}}
    assert ("probe", "empty file (0 bytes)", 1) in [tuple(r) for r in found["reasons"]]
    assert found["caption_words"]["n"] == found["by_status"]["ok"] and found["clip_seconds"]["max"] <= 4.0
    page = Path(found["sheet"]).read_text()
    assert page.count('<div class="card">') == found["by_status"]["ok"]
    assert page.count("data:image/jpeg;base64,") == found["by_status"]["ok"]

    table = subprocess.run(
        [sys.executable, "-m", "cli", "inspect", str(reference)], capture_output=True, text=True
    )
    assert (
        table.returncode == 0
        and "why clips did not make it" in table.stdout
        and "contact sheet" in table.stdout
    )
    curation = found["curation"]
    assert curation["kept"] == found["by_status"]["ok"] + sum(
        r["stage"] in ("caption", "encode") for r in rows
    )
    assert ["dedup", "near duplicate", 2] in curation["drops"] and ["filter", "black", 1] in curation["drops"]
    assert (
        Path(curation["histograms"]).stat().st_size > 0 and Path(curation["dropped_sheet"]).stat().st_size > 0
    )
    assert "curation scores" in table.stdout and "dropped before captioning" in table.stdout
    missing = subprocess.run([sys.executable, "-m", "cli", "inspect", str(reference / "nope")])
    assert missing.returncode == 1
