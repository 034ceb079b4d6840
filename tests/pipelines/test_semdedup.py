"""SemDeDup on a run folder written with the project's ShardWriter, and embeddings written as a run writes
them (``embeddings/{stem}.parquet``: clip_id, clip_emb): planted near-duplicate groups shrink to one clip
each, distinct clips stay, the eps sweep is monotone, and the rule is the paper's (compare with earlier
clips)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataengine.config import ConfigError
from dataengine.shards import ShardConfig, ShardWriter, iter_manifest_parts, read_manifest
from dataengine.storage import Store
from pipelines.errors import RunError
from pipelines.semdedup import SemDeDupConfig, cluster_similarities, rewrite_shards, semdedup, write_report

DIM = 32


def planted(groups: list[int], distinct: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Unit vectors: ``groups[g]`` near copies (noise 1e-3) of group g's random direction, then ``distinct``
    random directions. Returns the vectors and each vector's group (-1: distinct)."""
    rng = np.random.default_rng(seed)
    vectors, group_of = [], []
    for g, size in enumerate(groups):
        base = rng.standard_normal(DIM)
        for _ in range(size):
            vectors.append(base / np.linalg.norm(base) + 1e-3 * rng.standard_normal(DIM))
            group_of.append(g)
    for _ in range(distinct):
        vectors.append(rng.standard_normal(DIM))
        group_of.append(-1)
    emb = np.array(vectors, np.float32)
    order = rng.permutation(len(emb))  # duplicates spread over shards, not side by side
    return emb[order] / np.linalg.norm(emb[order], axis=1, keepdims=True), [group_of[i] for i in order]


def write_run(
    out: Path | Store, emb_ND: np.ndarray | None, failed: int = 2, per_shard: int = 16
) -> list[str]:
    """A run (a folder, or a Store of any URL): one tiny sample per vector (with its ``clip_emb.npy``),
    ``failed`` failure rows, and ``embeddings/{stem}.parquet`` per manifest part unless ``emb_ND`` is None.
    Returns the ok clip ids."""
    n = 20 if emb_ND is None else len(emb_ND)
    ids = [f"{i:032x}" for i in range(n)]
    with ShardWriter(out, ShardConfig(max_samples=per_shard)) as writer:
        for i, key in enumerate(ids):
            sample = {"latents.npy": np.zeros((4, 1, 2, 2), np.float16), "txt": f"clip {i}", "json": {"i": i}}
            if emb_ND is not None:
                sample["clip_emb.npy"] = emb_ND[i]
            writer.write(key, sample, {"caption": f"clip {i}"})
        for i in range(failed):
            writer.record_failure({"clip_id": f"f{i:031x}", "stage": "decode", "error": "corrupt"})
    if emb_ND is not None:
        write_embeddings(out, dict(zip(ids, emb_ND, strict=True)))
    return ids


def write_embeddings(out: Path | Store, vectors: dict[str, np.ndarray]) -> None:
    """``embeddings/{stem}.parquet`` next to each manifest part, for the ok clips of that part."""
    store = Store(out)
    for part, rows in iter_manifest_parts(store, columns=["clip_id", "status"]):
        ids = [r["clip_id"] for r in rows.to_pylist() if r["status"] == "ok" and r["clip_id"] in vectors]
        table = pa.table(
            {
                "clip_id": pa.array(ids, pa.string()),
                "clip_emb": pa.array([vectors[i].tolist() for i in ids], pa.list_(pa.float32())),
            }
        )
        with store.writing("embeddings", part) as f:
            pq.write_table(table, f)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[int]]:
    emb, group_of = planted([2, 3, 4, 2, 5], distinct=30)
    out = tmp_path_factory.mktemp("semdedup_run")
    return out, write_run(out, emb), group_of


def test_planted_duplicates_shrink_to_one_each_and_distinct_clips_stay(
    run: tuple[Path, list[str], list[int]],
) -> None:
    out, ids, group_of = run
    report = semdedup(out, SemDeDupConfig(eps=0.05))
    kept = set(report.keep)
    for g in range(5):
        assert sum(ids[i] in kept for i, gi in enumerate(group_of) if gi == g) == 1, f"group {g}"
    assert all(ids[i] in kept for i, gi in enumerate(group_of) if gi == -1)
    assert len(report.removed) == (2 + 3 + 4 + 2 + 5) - 5
    group = dict(zip(ids, group_of, strict=True))
    for d in report.removed:
        assert group[d.clip_id] == group[d.duplicate_of] >= 0 and d.similarity > 0.95


def test_keep_and_removed_partition_the_ok_clips_and_failures_are_left_out(
    run: tuple[Path, list[str], list[int]],
) -> None:
    out, ids, _ = run
    report = semdedup(out, SemDeDupConfig())
    removed = {d.clip_id for d in report.removed}
    assert not removed & set(report.keep)
    assert removed | set(report.keep) == set(ids)
    assert report.n == len(ids) and not report.not_embedded
    assert len(read_manifest(out)) == len(ids) + 2  # the failures exist, and are not clips to dedup


def test_the_eps_sweep_is_monotone_and_the_run_is_deterministic(
    run: tuple[Path, list[str], list[int]],
) -> None:
    out, _, _ = run
    config = SemDeDupConfig(eps=0.05, eps_sweep=[0.001, 0.01, 0.05, 0.3, 0.9, 1.5], clusters=3, seed=7)
    first, again = semdedup(out, config), semdedup(out, config)
    counts = [first.sweep[eps] for eps in sorted(first.sweep)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert first.sweep[0.05] == len(first.removed)
    assert (first.keep, first.removed, first.sweep) == (again.keep, again.removed, again.sweep)


def test_of_each_group_the_clip_farthest_from_the_centroid_stays(
    run: tuple[Path, list[str], list[int]],
) -> None:
    out, ids, group_of = run
    table = pq.read_table(out / "embeddings")
    emb = np.array(table["clip_emb"].to_pylist(), np.float32)
    centroid = emb.mean(axis=0) / np.linalg.norm(emb.mean(axis=0))
    distance = dict(zip(table["clip_id"].to_pylist(), 1 - emb @ centroid, strict=True))
    kept = set(semdedup(out, SemDeDupConfig(clusters=1)).keep)
    for g in range(5):
        group = [ids[i] for i, gi in enumerate(group_of) if gi == g]
        assert [c for c in group if c in kept] == [max(group, key=distance.__getitem__)]


def test_a_chain_removes_every_clip_similar_to_an_earlier_one_as_the_paper_does() -> None:
    """a~b and b~c but not a~c, in that order: b and c go (c is compared with b, removed or not)."""
    angle = np.radians(15)  # cos 15 deg = 0.966 > 0.95; cos 30 deg = 0.866 < 0.95
    chain = np.array([[np.cos(k * angle), np.sin(k * angle)] for k in range(3)], np.float32)
    prior, earlier, most = cluster_similarities(chain)
    assert prior[0] == -1 and list(earlier[1:]) == [0, 1]
    assert list(prior[1:] > 0.95) == [True, True]
    np.testing.assert_allclose(most, [np.cos(angle)] * 3, rtol=1e-6)


def test_big_clusters_computed_in_blocks_match_the_whole_matrix() -> None:
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((4200, 8)).astype(np.float32)  # 4200^2 > one block: two column blocks
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    prior, earlier, most = cluster_similarities(emb)
    full = emb @ emb.T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(most, full.max(axis=0), rtol=1e-5)
    upper = np.where(np.triu(np.ones_like(full, bool), k=1), full, -np.inf)
    np.testing.assert_allclose(prior[1:], upper.max(axis=0)[1:], rtol=1e-5)
    assert (earlier[1:] < np.arange(1, 4200)).all()


def test_ok_clips_without_an_embedding_are_kept_and_counted(tmp_path: Path) -> None:
    emb, _ = planted([3], distinct=5)
    ids = write_run(tmp_path, emb, per_shard=4)
    first_part = sorted((tmp_path / "embeddings").glob("*.parquet"))[0]
    first_part.unlink()
    report = semdedup(tmp_path, SemDeDupConfig())
    assert len(report.not_embedded) == 4 and set(report.not_embedded) <= set(report.keep)
    assert report.n == len(ids) - 4


def test_a_run_without_embeddings_says_how_to_get_them(tmp_path: Path) -> None:
    write_run(tmp_path, None)
    with pytest.raises(RunError, match=r"filters\.embed\.kind=descriptor"):
        semdedup(tmp_path, SemDeDupConfig())


def test_the_report_files_and_a_rewritten_run_hold_the_kept_clips(
    run: tuple[Path, list[str], list[int]], tmp_path: Path
) -> None:
    out, _, _ = run
    src = tmp_path / "run"
    src.mkdir()
    for sub in ("shards", "manifest", "embeddings"):
        (src / sub).symlink_to(out / sub)
    report = semdedup(src, SemDeDupConfig())
    folder = Path(write_report(src, report))
    assert pq.read_table(folder / "keep.parquet")["clip_id"].to_pylist() == report.keep
    removed = pq.read_table(folder / "removed.parquet")
    assert removed.column_names == ["clip_id", "duplicate_of", "similarity", "cluster"]
    assert removed["clip_id"].to_pylist() == [d.clip_id for d in report.removed]
    doc = json.loads((folder / "report.json").read_text())
    assert doc["kept"] == len(report.keep) and doc["config"]["eps"] == 0.05
    assert (folder / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.glob(".*"))  # no temporary file left

    assert rewrite_shards(src, tmp_path / "deduped") == len(report.keep)
    rewritten = read_manifest(tmp_path / "deduped")
    assert sorted(rewritten["clip_id"].to_pylist()) == report.keep
    again = semdedup(tmp_path / "deduped", SemDeDupConfig())
    assert not again.removed and again.n == len(report.keep)
    assert members(tmp_path / "deduped") == {k: v for k, v in members(out).items() if k[0] in report.keep}


def test_dedup_reads_and_writes_a_run_on_object_storage(s3_bucket: str, s3_options: dict[str, Any]) -> None:
    """The same run on S3 (moto): the same report, dedup/ written beside it, a rewrite to another URL."""
    emb, _ = planted([3, 2], distinct=10)
    run = Store(f"{s3_bucket}/run", s3_options)
    ids = write_run(run, emb, per_shard=4)
    report = semdedup(run, SemDeDupConfig())
    assert len(report.removed) == 3 and report.n == len(ids)
    assert write_report(run, report) == f"{s3_bucket}/run/dedup"
    assert run.listdir("dedup") == ["keep.parquet", "removed.parquet", "report.json", "similarity.png"]
    assert json.loads(run.read_bytes("dedup", "report.json"))["removed"] == 3
    deduped = Store(f"{s3_bucket}/deduped", s3_options)
    assert rewrite_shards(run, deduped) == len(report.keep)  # the keep-list read back from the run
    assert sorted(read_manifest(deduped, columns=["clip_id"])["clip_id"].to_pylist()) == report.keep
    assert members(deduped) == {k: v for k, v in members(run).items() if k[0] in report.keep}
    assert not semdedup(deduped, SemDeDupConfig()).removed  # its embeddings were copied too
    with pytest.raises(ConfigError, match="give a new folder"):
        rewrite_shards(run, deduped)


def members(run: Path | Store) -> dict[tuple[str, str], bytes]:
    """Every sample member of a run's shards: (key, member) -> bytes."""
    store = Store(run)
    found = {}
    for name in store.listdir("shards"):
        with tarfile.open(fileobj=io.BytesIO(store.read_bytes("shards", name))) as tar:
            for info in tar:
                key, _, member = info.name.partition(".")
                found[key, member] = tar.extractfile(info).read()  # type: ignore[union-attr]
    return found
