"""Store: a run's root on a local folder or a (moto) S3 bucket; writes appear whole or not at all."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import boto3
import pytest

from dataengine.storage import Store
from tests.net import free_port

_MIB = 1 << 20


class _BoomError(Exception):
    pass


def _client(s3_options: dict[str, Any]) -> Any:
    return boto3.client("s3", endpoint_url=s3_options["endpoint_url"], region_name="us-east-1")


def _bucket_and_prefix(store: Store) -> tuple[str, str]:
    bucket, _, key = store.path().partition("/")
    return bucket, key


# ------------------------------------------------------------------------------------------------- local


def test_local_targets_are_normalised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store("out/run/")
    assert store.local and store.url == str(tmp_path / "out" / "run") == str(store)
    assert Store(f"file://{tmp_path}/out/run/").url == store.url == Store(tmp_path / "out" / "run").url
    assert Store(store).url == store.url and pickle.loads(pickle.dumps(store)).url == store.url
    assert store.path("manifest/a.parquet") == store.uri("manifest", "a.parquet")
    assert store.uri("manifest", "a.parquet") == str(tmp_path / "out" / "run" / "manifest" / "a.parquet")
    for bad in ("../x", "/abs", "a//b", "a/./b"):
        with pytest.raises(ValueError, match="relative to"):
            store.path(bad)


def test_local_writing_appears_only_when_the_block_completes(tmp_path: Path) -> None:
    store = Store(tmp_path / "run")
    with store.writing("shards", "a.tar") as f:  # parent folders are made as needed
        f.write(b"abc")
        assert store.listdir("shards") == [".a.tar.partial"] and not store.exists("shards/a.tar")
        with pytest.raises(FileExistsError), store.writing("shards/a.tar"):
            pass  # a second writer of the same name is refused, and leaves the first one's file alone
    assert store.read_bytes("shards", "a.tar") == b"abc" and store.listdir("shards") == ["a.tar"]

    with pytest.raises(_BoomError), store.writing("shards/b.tar") as f:
        f.write(b"half")
        raise _BoomError
    assert store.listdir("shards") == ["a.tar"]  # no b.tar, no partial

    store.write_bytes("shards/a.tar", data=b"new")
    (tmp_path / "run" / "shards" / "sub").mkdir()
    assert store.read_bytes("shards/a.tar") == b"new" and store.listdir("shards") == ["a.tar"]  # files only
    assert store.listdir("missing") == [] and store.abort_uploads() == []
    store.remove("shards/a.tar", "shards/never.tar")
    assert store.listdir("shards") == []


def test_an_unwritable_local_root_raises_an_oserror_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = Store(tmp_path / "file" / "run")
    with pytest.raises(OSError, match=str(tmp_path / "file" / "run" / "x")):
        store.write_bytes("x", data=b"")


# ---------------------------------------------------------------------------------------------------- s3


@pytest.fixture(params=["options", "environment"])
def s3_store(request: pytest.FixtureRequest, s3_bucket: str, s3_options: dict[str, Any]) -> Store:
    """A run root in a fresh bucket, reached through storage options, or through the environment alone
    (AWS_ENDPOINT_URL, as a subprocess given a bare s3:// URL would)."""
    options = s3_options if request.param == "options" else {}
    return Store(f"{s3_bucket}/run/", {**options, "default_block_size": 5 * _MIB})


def test_s3_names(s3_store: Store, s3_bucket: str) -> None:
    assert not s3_store.local and s3_store.url == str(s3_store) == f"{s3_bucket}/run"
    assert s3_store.uri("shards", "a.tar") == f"{s3_bucket}/run/shards/a.tar"
    assert s3_store.path("shards/a.tar") == f"{s3_bucket.removeprefix('s3://')}/run/shards/a.tar"
    copy = pickle.loads(pickle.dumps(s3_store))
    assert copy.url == s3_store.url and copy.storage_options == s3_store.storage_options
    with pytest.raises(ValueError, match="bucket"):
        Store("s3://")


def test_s3_writing_completes_on_exit_and_aborts_on_an_exception(
    s3_store: Store, s3_options: dict[str, Any]
) -> None:
    big = bytes(range(256)) * (12 * _MIB // 256)  # three 5 MiB blocks: a multipart upload
    with pytest.raises(_BoomError), s3_store.writing("shards", "big.tar") as f:
        f.write(big)
        assert s3_store.pending_uploads() == ["run/shards/big.tar"]  # parts uploaded, nothing visible
        assert s3_store.listdir("shards") == [] and not s3_store.exists("shards/big.tar")
        raise _BoomError
    bucket, _ = _bucket_and_prefix(s3_store)
    assert "Uploads" not in _client(s3_options).list_multipart_uploads(Bucket=bucket)
    assert s3_store.listdir("shards") == [] and not s3_store.exists("shards/big.tar")

    with s3_store.writing("shards/big.tar") as f:
        f.write(big)
    assert s3_store.read_bytes("shards/big.tar") == big and s3_store.pending_uploads() == []
    with pytest.raises(_BoomError), s3_store.writing("shards/small.tar") as f:
        f.write(b"one block, never sent")
        raise _BoomError
    assert s3_store.listdir("shards") == ["big.tar"]


def test_s3_listdir_is_never_stale(s3_store: Store, s3_options: dict[str, Any]) -> None:
    client, (bucket, root) = _client(s3_options), _bucket_and_prefix(s3_store)
    s3_store.write_bytes("manifest/a.parquet", data=b"a")
    assert s3_store.listdir("manifest") == ["a.parquet"]
    s3_store.fs.ls(s3_store.path("manifest"))  # s3fs now holds a cached listing
    client.put_object(Bucket=bucket, Key=f"{root}/manifest/b.parquet", Body=b"b")
    client.put_object(Bucket=bucket, Key=f"{root}/manifest/sub/c.parquet", Body=b"c")  # a "directory"
    assert s3_store.listdir("manifest") == ["a.parquet", "b.parquet"]
    assert s3_store.exists("manifest/b.parquet")
    client.delete_object(Bucket=bucket, Key=f"{root}/manifest/a.parquet")
    assert s3_store.listdir("manifest") == ["b.parquet"] and not s3_store.exists("manifest/a.parquet")
    s3_store.write_bytes("manifest/b.parquet", data=b"B")
    assert s3_store.read_bytes("manifest", "b.parquet") == b"B"
    s3_store.remove("manifest/b.parquet", "manifest/never.parquet")
    assert s3_store.listdir("manifest") == [] and s3_store.listdir("nothing") == []


def test_abort_uploads_removes_what_a_killed_writer_left_under_its_prefix_only(
    s3_store: Store, s3_options: dict[str, Any]
) -> None:
    client, (bucket, root) = _client(s3_options), _bucket_and_prefix(s3_store)
    keys = [f"{root}/shards/x.tar", f"{root}/manifest/x.parquet", f"{root}2/shards/y.tar", "elsewhere/z"]
    for key in keys:  # writers that started a multipart upload and were killed before completing it
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)
    assert s3_store.listdir("shards") == []  # invisible to listings

    assert s3_store.abort_uploads("shards/") == [f"{root}/shards/x.tar"]
    assert s3_store.abort_uploads() == [f"{root}/manifest/x.parquet"]  # not the sibling run's "run2/..."
    assert s3_store.abort_uploads() == []
    left = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert sorted(u["Key"] for u in left) == sorted([f"{root}2/shards/y.tar", "elsewhere/z"])


def test_s3_errors_are_oserrors_naming_the_url(s3_bucket: str, s3_options: dict[str, Any]) -> None:
    missing = Store("s3://no-such-bucket-here/run", s3_options)
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-here/run/x"):
        missing.write_bytes("x", data=b"")
    unreachable = Store(
        f"{s3_bucket}/run",
        {**s3_options, "endpoint_url": f"http://127.0.0.1:{free_port()}",
         "config_kwargs": {"retries": {"max_attempts": 1}}},
    )  # fmt: skip
    with pytest.raises(OSError, match=f"{s3_bucket}/run/shards"):
        unreachable.listdir("shards")
