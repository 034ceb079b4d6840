"""Shard writer: plain webdataset and Ray read what it writes; a killed writer leaves no torn final shard."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from dataengine.shards import (
    ShardConfig,
    ShardWriter,
    cleanup_partials,
    completed_keys,
    read_manifest,
)

REPO = Path(__file__).resolve().parents[2]


def make_sample(i: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Key, sample and manifest row of clip ``i``; the same ``i`` always gives the same bytes."""
    key = f"{i:032x}"
    latents_CTHW = np.random.default_rng(i).standard_normal((4, 2, 8, 8)).astype(np.float16)
    jpg = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), i % 256, np.uint8)).save(jpg, format="JPEG")
    sample = {
        "latents.npy": latents_CTHW,
        "txt": f"caption {i}",
        "json": {"short_caption": f"short {i}", "start_s": float(i), "fps": 8.0},
        "jpg": jpg.getvalue(),
    }
    row = {
        "clip_id": key,
        "video_id": "v" * 32,
        "source": f"file:///videos/{i}.mp4",
        "start_s": float(i),
        "end_s": float(i) + 2.0,
        "latent_shape": list(latents_CTHW.shape),
        "caption": f"caption {i}",
        "model_ids": {"vae": "tiny-vae"},
        "timings": {"encode": 0.01},
    }
    return key, sample, row


def write_all(out: Path, indices: range, config: ShardConfig) -> ShardWriter:
    with ShardWriter(out, config) as writer:
        for i in indices:
            writer.write(*make_sample(i))
    return writer


def test_round_trip_with_plain_webdataset(tmp_path: Path) -> None:
    write_all(tmp_path, range(25), ShardConfig(max_samples=10))

    names = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert names == [f"shard-00000-{i:06d}.tar" for i in range(3)]
    urls = [str(tmp_path / "shards" / n) for n in names]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [make_sample(i)[0] for i in range(25)]
    for i, got in enumerate(samples):
        _, want, _ = make_sample(i)
        assert got["latents.npy"].dtype == np.float16 and got["latents.npy"].shape == (4, 2, 8, 8)
        np.testing.assert_array_equal(got["latents.npy"], want["latents.npy"])
        assert got["txt"] == want["txt"] and got["json"] == want["json"]
        assert Path(got["__url__"]).name == f"shard-00000-{i // 10:06d}.tar"

    manifest = read_manifest(tmp_path)
    ok = manifest.filter(manifest["status"].to_numpy(zero_copy_only=False) == "ok").to_pylist()
    assert [r["clip_id"] for r in ok] == [s["__key__"] for s in samples]
    assert [r["shard"] for r in ok] == [f"shard-00000-{i // 10:06d}.tar" for i in range(25)]
    assert ok[3]["latent_shape"] == [4, 2, 8, 8] and ok[3]["model_ids"] == '{"vae": "tiny-vae"}'
    assert ok[3]["width"] is None  # missing keys are nulls
    assert completed_keys(tmp_path) == {r["clip_id"] for r in ok}


def test_same_samples_give_identical_shards(tmp_path: Path) -> None:
    write_all(tmp_path / "a", range(5), ShardConfig())
    write_all(tmp_path / "b", range(5), ShardConfig())
    name = "shards/shard-00000-000000.tar"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_arrays_of_any_layout_are_stored_as_np_save_writes_them(tmp_path: Path) -> None:
    """Arrays skip the generic encoder (no copies); the member must still be exactly np.save's bytes."""
    base = np.arange(2 * 3 * 64, dtype=np.float16).reshape(2, 3, 64)
    arrays = {
        "latents.npy": base.transpose(2, 0, 1),  # not C-contiguous
        "text_emb.npy": base[:, 1, ::2],  # strided
        "text_mask.npy": np.array([True, False, True]),
        "scalar.npy": np.float32(3.5) * np.ones(()),
    }
    with ShardWriter(tmp_path, ShardConfig()) as writer:
        writer.write("k" * 32, arrays, {})
    with tarfile.open(writer.written[0]) as tar:
        members = {m.name.split(".", 1)[1]: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    for name, array in arrays.items():
        expected = io.BytesIO()
        np.save(expected, array)
        assert members[name] == expected.getvalue(), name


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # another module's session: reuse it, leave it running
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()


def test_ray_reads_the_shards(tmp_path: Path, ray_local: None) -> None:
    import ray.data

    writer = write_all(tmp_path, range(12), ShardConfig(max_samples=5))
    rows = ray.data.read_webdataset([str(p) for p in writer.written]).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(completed_keys(tmp_path))
    assert len(rows) == 12


def test_max_bytes_rolls_over(tmp_path: Path) -> None:
    one = tmp_path / "one"
    write_all(one, range(1), ShardConfig())
    sample_tar = (one / "shards" / "shard-00000-000000.tar").stat().st_size  # 1 sample + padding
    limit = 3 * sample_tar  # fits 5 of these samples, not 6: 10 blocks each, 2 end blocks, 20-block records
    writer = write_all(tmp_path / "many", range(20), ShardConfig(max_bytes=limit))
    assert all(Path(p).stat().st_size <= limit for p in writer.written)
    members = []
    for p in writer.written:
        with tarfile.open(p) as tar:
            members.append(len(tar.getmembers()))
    assert members == [5 * 4] * 4


def test_failures_are_manifest_rows_without_samples(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, ShardConfig(max_samples=2)) as writer:
        writer.record_failure({"clip_id": "bad0", "stage": "decode", "error": "moov atom not found"})
        for i in range(3):
            writer.write(*make_sample(i))
        writer.record_failure({"clip_id": "bad1", "stage": "caption", "error": "empty caption"})
        writer.record_failure({"video_id": "x" * 32, "stage": "probe", "error": "no video stream"})

    # bad0 waited for shard 0; bad1 and the probe failure joined the open shard 1; nothing followed them
    rows = read_manifest(tmp_path).to_pylist()
    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["clip_id"], r["stage"], r["shard"]) for r in failed] == [
        ("bad0", "decode", None),
        ("bad1", "caption", None),
        (None, "probe", None),
    ]
    assert failed[0]["error"] == "moov atom not found"
    keys = {s["__key__"] for p in writer.written for s in wds.WebDataset(str(p), shardshuffle=False)}
    assert keys == {make_sample(i)[0] for i in range(3)}

    # failures after the last shard closed go into a failures-only part; nothing is dropped
    with ShardWriter(tmp_path, ShardConfig(), run_part="00001") as writer:
        writer.write(*make_sample(9))
        writer.close()
        writer.record_failure({"clip_id": "bad2", "stage": "encode", "error": "CUDA OOM"})
    assert sorted(p.name for p in (tmp_path / "manifest").glob("*-00001-*")) == [
        "shard-00001-000000.parquet",
        "shard-00001-000001.parquet",
    ]
    assert {"bad0", "bad1", "bad2"} <= completed_keys(tmp_path)
    assert "bad2" not in completed_keys(tmp_path, include_failed=False)


def test_bad_keys_and_rows_are_refused(tmp_path: Path) -> None:
    key, sample, row = make_sample(0)
    with ShardWriter(tmp_path, ShardConfig()) as writer:
        with pytest.raises(ValueError, match="no dots"):
            writer.write("a.b", sample, {})
        writer.write(key, sample, row)
        with pytest.raises(ValueError, match="already written"):
            writer.write(key, sample, row)
        with pytest.raises(ValueError, match="unknown manifest columns"):
            writer.write("k2", sample, {"captoin": "typo"})
        with pytest.raises(ValueError, match="stage"):
            writer.record_failure({"clip_id": "k3", "error": "no stage"})
    # refused samples left nothing behind: the shard holds exactly one complete sample
    assert [s["__key__"] for s in wds.WebDataset(str(writer.written[0]), shardshuffle=False)] == [key]


_CHILD = """
import sys, time
from pathlib import Path
from dataengine.shards import ShardConfig, ShardWriter
from tests.dataengine.test_shards import make_sample

writer = ShardWriter(Path(sys.argv[1]), ShardConfig(max_samples=10))
for i in range(25):
    writer.write(*make_sample(i))
    print(i, flush=True)
    time.sleep(0.05 if i < 14 else 60)
"""


def test_killed_writer_leaves_no_torn_shard_and_resume_completes(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CHILD), str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    for line in child.stdout:  # kill once sample 14 is in shard 1, i.e. mid-shard
        if int(line) == 14:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)

    shards = tmp_path / "shards"
    final = sorted(shards.glob("*.tar"))
    assert [p.name for p in final] == ["shard-00000-000000.tar"]
    for p in final:
        with tarfile.open(p) as tar:  # reads every header to the end-of-archive marker
            assert len(tar.getmembers()) == 10 * 4
        assert (tmp_path / "manifest" / f"{p.stem}.parquet").exists()
    partial = shards / ".shard-00000-000001.tar.partial"
    assert partial.exists()
    with pytest.raises(FileExistsError, match="cleanup_partials"):
        ShardWriter(tmp_path, ShardConfig(max_samples=10))

    assert cleanup_partials(tmp_path) == [str(partial)]
    done = completed_keys(tmp_path)
    assert done == {make_sample(i)[0] for i in range(10)}
    with ShardWriter(tmp_path, ShardConfig(max_samples=10)) as writer:
        for i in range(25):
            key, sample, row = make_sample(i)
            if key not in done:
                writer.write(key, sample, row)

    # the resumed run gives the names and contents of a run that never crashed
    write_all(tmp_path / "clean", range(25), ShardConfig(max_samples=10))
    for name in ("shard-00000-000000.tar", "shard-00000-000001.tar", "shard-00000-000002.tar"):
        assert (shards / name).read_bytes() == (tmp_path / "clean" / "shards" / name).read_bytes()
    assert completed_keys(tmp_path) == {make_sample(i)[0] for i in range(25)}


def test_cleanup_removes_a_shard_that_never_got_its_manifest(tmp_path: Path) -> None:
    write_all(tmp_path, range(3), ShardConfig())
    (tmp_path / "manifest" / "shard-00000-000000.parquet").unlink()  # crash between the two renames
    assert cleanup_partials(tmp_path) == [str(tmp_path / "shards" / "shard-00000-000000.tar")]
    assert cleanup_partials(tmp_path) == []
