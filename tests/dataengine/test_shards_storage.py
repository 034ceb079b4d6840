"""Shard writer and readers over a Store: a moto S3 bucket, and the column and scoping options of the readers
and of cleanup_partials on a local folder."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import boto3
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from webdataset.tariterators import group_by_keys, tar_file_expander

from dataengine.shards import (
    MANIFEST_SCHEMA,
    ShardConfig,
    ShardWriter,
    cleanup_partials,
    completed_keys,
    iter_manifest_parts,
    read_embeddings,
    read_manifest,
)
from dataengine.storage import Store
from tests.dataengine.test_shards import REPO, make_sample, write_all

_MIB = 1 << 20


class _BoomError(Exception):
    pass


def _keys(store: Store, uris: list[str]) -> list[str]:
    """Sample keys of the shards at ``uris``, read as the trainer reads them: webdataset over fsspec."""
    keys = []
    for uri in uris:
        with fsspec.open(uri, "rb", **store.storage_options) as stream:
            samples = group_by_keys(tar_file_expander([{"url": uri, "stream": stream}]))
            keys += [s["__key__"] for s in samples]
    return keys


def big_sample(i: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``make_sample(i)`` with a 1.5 MiB member, so a few samples fill a 5 MiB upload part."""
    key, sample, row = make_sample(i)
    pad = np.random.default_rng(i).integers(0, 255, 3 * _MIB // 2, dtype=np.uint8)
    return key, {**sample, "pad.npy": pad}, row


def _pending(s3_options: dict[str, Any], store: Store) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3_options["endpoint_url"], region_name="us-east-1")
    uploads = client.list_multipart_uploads(Bucket=store.path().split("/", 1)[0]).get("Uploads", [])
    return sorted(u["Key"] for u in uploads)


# ---------------------------------------------------------------------------------------------------- s3


def test_s3_round_trip(s3_bucket: str, s3_options: dict[str, Any]) -> None:
    store = Store(f"{s3_bucket}/run", s3_options)
    with ShardWriter(store, ShardConfig(max_samples=10)) as writer:
        for i in range(25):
            key, sample, row = make_sample(i)
            writer.write(key, sample, {**row, "bucket": "video-4x2x8x8", "clip_emb": np.ones(4) * i})
        writer.record_failure({"clip_id": "bad", "stage": "decode", "error": "moov atom not found"})

    names = [f"shard-00000-{i:06d}" for i in range(3)]
    assert writer.written == [store.uri("shards", f"{n}.tar") for n in names]
    assert store.listdir("shards") == [f"{n}.tar" for n in names]
    assert store.listdir("manifest") == store.listdir("embeddings") == [f"{n}.parquet" for n in names]
    assert _keys(store, writer.written) == [make_sample(i)[0] for i in range(25)]
    rows = read_manifest(store).to_pylist()
    assert [r["bucket"] for r in rows] == ["video-4x2x8x8"] * 25 + [None]
    assert rows[-1]["status"] == "failed" and rows[-1]["shard"] is None
    assert completed_keys(f"{s3_bucket}/run/", include_failed=False) == {make_sample(i)[0] for i in range(25)}
    embeddings = read_embeddings(store)
    assert embeddings.num_rows == 25 and embeddings["clip_emb"][3].as_py() == [3.0] * 4


def test_s3_abort_leaves_nothing(s3_bucket: str, s3_options: dict[str, Any]) -> None:
    store = Store(f"{s3_bucket}/run", {**s3_options, "default_block_size": 5 * _MIB})
    with pytest.raises(_BoomError), ShardWriter(store, ShardConfig(max_samples=10)) as writer:
        for i in range(6):  # 9 MiB: one part uploaded
            writer.write(*big_sample(i))
        assert _pending(s3_options, store) == [
            f"{store.path('shards')}/shard-00000-000000.tar".split("/", 1)[1]
        ]
        raise _BoomError
    assert _pending(s3_options, store) == [] and writer.written == []
    assert [store.listdir(d) for d in ("shards", "manifest", "embeddings")] == [[], [], []]


_CHILD = """
import sys, time
from dataengine.shards import ShardConfig, ShardWriter
from dataengine.storage import Store
from tests.dataengine.test_shards_storage import big_sample

store = Store(sys.argv[1], {"default_block_size": 5 << 20})  # no endpoint: AWS_ENDPOINT_URL names it
writer = ShardWriter(store, ShardConfig(max_samples=10))
for i in range(25):
    writer.write(*big_sample(i))
    print(i, flush=True)
    time.sleep(0.01 if i < 15 else 60)
"""


def test_killed_s3_writer_leaves_an_upload_that_cleanup_aborts(
    s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    url = f"{s3_bucket}/run"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CHILD), url], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    for line in child.stdout:  # shard 0 committed, 6 samples (9 MiB) of shard 1 sent as one part
        if int(line) == 15:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)

    store = Store(url, s3_options)
    assert store.listdir("shards") == ["shard-00000-000000.tar"]
    assert _pending(s3_options, store) == ["run/shards/shard-00000-000001.tar"]
    with pytest.raises(FileExistsError, match="cleanup_partials"):
        ShardWriter(store, ShardConfig(max_samples=10))
    assert cleanup_partials(store) == [store.uri("shards", "shard-00000-000001.tar")]
    assert _pending(s3_options, store) == []

    done = completed_keys(store)
    with ShardWriter(store, ShardConfig(max_samples=10)) as writer:
        for i in range(25):
            if (sample := big_sample(i))[0] not in done:
                writer.write(*sample)
    assert store.listdir("shards") == [f"shard-00000-{i:06d}.tar" for i in range(3)]
    assert completed_keys(store) == {make_sample(i)[0] for i in range(25)}


def test_cleanup_with_stem_prefix_touches_only_its_own_names(
    s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    store = Store(f"{s3_bucket}/run", s3_options)
    for part in ("p00of02", "p01of02"):
        with ShardWriter(store, ShardConfig(max_samples=2), run_part=part) as writer:
            for i in range(4):
                writer.write(*make_sample(i))
        store.remove(f"manifest/shard-{part}-000001.parquet")  # a crash between the tar and its manifest
        with pytest.raises(_BoomError), store.writing("shards", f"shard-{part}-000002.tar"):
            raise _BoomError  # (aborted: nothing left)
        client = boto3.client("s3", endpoint_url=s3_options["endpoint_url"], region_name="us-east-1")
        client.create_multipart_upload(
            Bucket=store.path().split("/")[0], Key=f"run/shards/shard-{part}-000002.tar"
        )

    assert cleanup_partials(store, stem_prefix="shard-p01of02-") == [
        store.uri("shards", "shard-p01of02-000001.tar"),
        store.uri("shards", "shard-p01of02-000002.tar"),  # the killed writer's upload
    ]
    assert store.listdir("shards") == [
        "shard-p00of02-000000.tar", "shard-p00of02-000001.tar", "shard-p01of02-000000.tar",
    ]  # fmt: skip
    assert _pending(s3_options, store) == ["run/shards/shard-p00of02-000002.tar"]
    assert len(cleanup_partials(store)) == 2 and _pending(s3_options, store) == []


# ------------------------------------------------------------------------------------------------- local


def test_local_cleanup_with_stem_prefix(tmp_path: Path) -> None:
    write_all(tmp_path, range(2), ShardConfig(max_samples=1))
    (
        tmp_path / "manifest" / "shard-00000-000001.parquet"
    ).unlink()  # a crash between the tar and its manifest
    for part in ("p00of02", "p01of02"):  # writers of two partitions, killed mid-shard
        (tmp_path / "shards" / f".shard-{part}-000000.tar.partial").write_bytes(b"torn")

    shards = tmp_path / "shards"
    assert cleanup_partials(tmp_path, "shard-p01of02-") == [str(shards / ".shard-p01of02-000000.tar.partial")]
    assert cleanup_partials(Store(tmp_path), "shard-00000-") == [str(shards / "shard-00000-000001.tar")]
    assert cleanup_partials(str(tmp_path)) == [str(shards / ".shard-p00of02-000000.tar.partial")]
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00000-000000.tar"]


def test_manifest_columns_and_parts(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, ShardConfig(max_samples=2)) as writer:
        for i in range(3):
            key, sample, row = make_sample(i)
            writer.write(key, sample, {**row, "bucket": f"video-{i}"})
    old = pa.table({"clip_id": ["old"], "status": ["ok"]})  # a part written before "bucket" existed
    pq.write_table(old, tmp_path / "manifest" / "shard-00000-000009.parquet")

    parts = list(iter_manifest_parts(tmp_path, columns=["bucket", "clip_id"]))
    assert [name for name, _ in parts] == [f"shard-00000-{i:06d}.parquet" for i in (0, 1, 9)]
    assert all(t.column_names == ["bucket", "clip_id"] for _, t in parts)
    assert parts[2][1].to_pylist() == [{"bucket": None, "clip_id": "old"}]
    assert read_manifest(tmp_path, columns=["bucket"])["bucket"].to_pylist() == [
        "video-0",
        "video-1",
        "video-2",
        None,
    ]
    assert read_manifest(tmp_path).schema == MANIFEST_SCHEMA
    assert read_manifest(tmp_path / "nothing", columns=["clip_id"]).column_names == ["clip_id"]
    with pytest.raises(ValueError, match="unknown manifest columns"):
        read_manifest(tmp_path, columns=["captoin"])
