"""The resume ledger on disk and the writer actors' exactly-once bookkeeping: real files, a local Ray."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from dataengine.curate.dedup import NearDupConfig
from dataengine.records import Clip, Failure, ProbeInfo
from dataengine.shards import ShardConfig, ShardWriter, read_manifest
from dataengine.stages.sample import Sample
from dataengine.storage import Store
from pipelines.ledger import Ledger, SplitLog, cleanup_splits
from pipelines.pools import WorkItem
from pipelines.writers import OutputConfig, ShardSink, Writers, bucket_of

PROBE = ProbeInfo(
    duration_s=4.0,
    avg_fps=8.0,
    r_fps=8.0,
    n_frames=32,
    n_frames_exact=True,
    width=64,
    height=48,
    rotation=0,
    codec="h264",
    pix_fmt="yuv420p",
    bit_depth=8,
    is_vfr=False,
    has_audio=False,
    container="mp4",
    size_bytes=1,
)


def clip(video: str, index: int) -> Clip:
    return Clip(
        clip_id=f"{video}-{index}",
        video_id=video,
        uri=f"/data/{video}.mp4",
        path=f"/data/{video}.mp4",
        index=index,
        start_s=float(index),
        end_s=index + 1.0,
        shot=0,
        probe=PROBE,
    )


def sample(key: str, frames: int = 3) -> Sample:
    latents = np.zeros((4, frames, 2, 2), np.float32)
    row = {"clip_id": key, "latent_shape": list(latents.shape), "source": "/data/v.mp4"}
    return Sample(key, {"latents.npy": latents, "txt": key}, row, clip(key, 0))


def test_the_ledger_knows_committed_clips_and_videos_and_replays_finished_splits(tmp_path: Path) -> None:
    store = Store(tmp_path / "run")
    with ShardWriter(store, ShardConfig(max_samples=2), "w00") as writer:
        writer.write("a-0", {"txt": "a"}, {"source": "/data/a.mp4"})
        writer.record_failure({"source": "/data/broken.mp4", "stage": "probe", "error": "empty file"})
    splits = SplitLog(store, tag="", every=1)
    records: list[Clip | Failure] = [
        clip("a", 0),
        clip("a", 1),
        Failure.of(clip("a", 2), "split", "too short"),
    ]
    splits.add("/data/a.mp4", records)
    SplitLog(store, tag="", every=10).add("/data/b.mp4", [clip("b", 0)])  # never committed: no row

    ledger, index = Ledger.read(store)
    try:
        assert "a-0" in ledger and "/data/broken.mp4" in ledger and "a-1" not in ledger
        assert ledger.resumed_clips == 1 and len(index) == 0  # no fingerprints in these rows
        assert ledger.split_of("/data/a.mp4") == records and ledger.split_of("/data/b.mp4") is None
        assert ledger.mark("a-1") and not ledger.mark("a-1") and not ledger.mark("a-0")
    finally:
        ledger.close()
    assert store.listdir("splits") == ["000000.parquet"]
    assert SplitLog(store, tag="")._next == 1  # continues the numbering


def test_the_duplicate_index_is_seeded_from_rows_with_fingerprints_only_when_dedup_is_on(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "run")
    fingerprint = {"frames_digest": "ab" * 16, "phash": [1, 2**40, 3, 2**63]}
    with ShardWriter(store, ShardConfig(), "w00") as writer:
        writer.write("a-0", {"txt": "a"}, {"source": "/data/a.mp4", **fingerprint})
        writer.write("b-0", {"txt": "b"}, {"source": "/data/b.mp4"})
    for enabled, held in ((True, 1), (False, 0)):
        ledger, index = Ledger.read(store, NearDupConfig(enabled=enabled))
        assert len(index) == held and ledger.resumed_clips == 2
        ledger.close()


def test_a_killed_drivers_partial_split_part_is_removed_and_only_its_own(tmp_path: Path) -> None:
    store = Store(tmp_path / "run")
    (tmp_path / "run" / "splits").mkdir(parents=True)
    for name in (
        ".p00of02-000003.parquet.partial",
        ".p01of02-000001.parquet.partial",
        "p00of02-000000.parquet",
    ):
        (tmp_path / "run" / "splits" / name).write_bytes(b"x")
    assert cleanup_splits(store, "p00of02-") == ["splits/.p00of02-000003.parquet.partial"]
    assert sorted(store.listdir("splits")) == [".p01of02-000001.parquet.partial", "p00of02-000000.parquet"]


def test_buckets_group_samples_by_latent_shape() -> None:
    assert bucket_of({"latent_shape": [16, 21, 60, 104]}) == "video-21x60x104"
    assert bucket_of({"latent_shape": [16, 1, 32, 32]}) == "image-1x32x32"
    assert bucket_of({"latent_shape": [16, 1, 32, 32]}, buckets=False) == bucket_of({}) == "all"


def test_a_sink_keeps_one_shard_stream_per_bucket_and_reports_what_it_committed(tmp_path: Path) -> None:
    store = Store(tmp_path / "run")
    sink = ShardSink(store, ShardConfig(max_samples=2), "w00", OutputConfig())
    assert sink.write(sample("v1"), sample("i1", frames=1), sample("v2")) == (["v1", "v2"], 1)  # full: now
    assert sink.write(sample("v3")) == ([], 0)
    committed, shards = sink.flush()
    assert sorted(committed) == ["i1", "v3"] and shards == 2
    rows = read_manifest(store).to_pylist()
    assert {r["clip_id"]: r["bucket"] for r in rows} == {
        "v1": "video-3x2x2",
        "v2": "video-3x2x2",
        "v3": "video-3x2x2",
        "i1": "image-1x2x2",
    }
    for row in rows:  # one shape a shard, and the shard's name says which
        assert row["bucket"] in row["shard"] and row["shard"].startswith("shard-w00-")


def test_a_shard_open_longer_than_max_shard_age_s_is_committed_at_the_next_batch(tmp_path: Path) -> None:
    sink = ShardSink(Store(tmp_path / "run"), ShardConfig(), "w00", OutputConfig(max_shard_age_s=0.2))
    assert sink.write(sample("v1")) == ([], 0)
    time.sleep(0.3)
    assert sink.write(sample("v2")) == (["v1", "v2"], 1)  # not full (1000), but old: a kill loses less
    assert sink.write(sample("v3")) == ([], 0) and sink.flush() == (["v3"], 1)


def test_a_killed_writer_loses_only_uncommitted_samples_and_they_come_back_to_be_made_again(
    tmp_path: Path, ray_local: None
) -> None:
    import ray

    store = Store(tmp_path / "run")
    writers = Writers(store, ShardConfig(max_samples=2), OutputConfig(writers=1, num_cpus=0), tag="")

    def drain() -> tuple[list[str], list[WorkItem]]:
        committed: list[str] = []
        redo: list[WorkItem] = []
        while refs := writers.refs():
            ready, _ = ray.wait(refs, num_returns=1)
            keys, _, again = writers.finish(ready[0])
            committed += keys
            redo += again
        return committed, redo

    items = [WorkItem(f"k{i}", clip("v", i), None) for i in range(3)]
    writers.submit(items, [ray.put(sample(i.key)) for i in items])
    committed, redo = drain()
    assert committed == ["k0", "k1"] and not redo and writers.pending() == 1  # k2 sits in the open shard
    pid = ray.get(writers.slots[0].actor.__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)
    more = [WorkItem("k3", clip("v", 3), None)]
    writers.submit(more, [ray.put(sample("k3"))])
    committed, redo = drain()
    assert not committed and sorted(i.key for i in redo) == ["k2", "k3"] and writers.deaths == 1
    assert all(i.attempts == 1 for i in redo) and writers.pending() == 0

    writers.submit(redo, [ray.put(sample(i.key)) for i in redo])  # made again: the replacement writes them
    writers.flush()
    committed, _ = drain()
    assert sorted(committed) == ["k2", "k3"] and writers.done()
    keys = read_manifest(store).column("clip_id").to_pylist()
    assert sorted(keys) == ["k0", "k1", "k2", "k3"]  # once each: the dead writer's open shard was discarded
    assert not [n for d in ("shards", "manifest") for n in store.listdir(d) if n.startswith(".")]
    writers.shutdown()
