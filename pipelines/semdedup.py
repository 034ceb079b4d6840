"""Semantic deduplication of a finished run (SemDeDup, Abbas et al. 2023, arXiv:2303.09540).

    report = semdedup("out/run", SemDeDupConfig(eps=0.05))
    write_report("out/run", report)           # out/run/dedup/{keep,removed}.parquet, report.json, png
    rewrite_shards("out/run", "out/run-dedup")  # optional: new shards with the kept samples only

A run is a folder or a URL (``s3://bucket/run``), or a ``Store`` carrying storage options; it is read and
written through that store. Input: the ``clip_emb`` vectors of the run's ok samples, read from
``embeddings/{stem}.parquet`` (one part per manifest part: ``clip_id``, ``clip_emb`` L2-normalised, one
length per run). Nothing else of the run is read.

The rule, as the paper's reference code applies it:

1. k-means on the embeddings (``clusters``; default ``ceil(sqrt(n / 2))``, a mean cluster of about
   ``sqrt(2n)`` clips, so the pairwise work is about ``n * sqrt(2n) * D``).
2. Inside each cluster, order the clips by cosine distance to the (normalised) centroid, **farthest first**
   (the paper's ``keep_hard``), ties by clip id.
3. For each clip j, ``M_j`` = its highest cosine similarity to a clip *earlier* in that order (the column
   maximum of the strictly upper triangle of the cluster's similarity matrix).
4. Clip j is removed when ``M_j > 1 - eps``; the first clip of every cluster is always kept. ``duplicate_of``
   is the earlier clip reaching ``M_j`` (it may be removed itself; following ``duplicate_of`` always ends at
   a kept clip, since it points strictly earlier). As in the paper, a clip is compared with every earlier
   clip, kept or not, so a chain a~b~c removes b and c even when a and c are not alike.

``M_j`` does not depend on eps, so one pass gives the whole eps sweep, and the count removed grows with eps.
Near duplicates that k-means puts into different clusters are not found (the paper's trade-off). The
similarity matrix of a big cluster is computed in column blocks of at most ``_BLOCK_ELEMENTS`` entries.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from dataengine.config import Config, ConfigError
from dataengine.shards import ShardConfig, ShardWriter, iter_manifest_parts, read_manifest
from dataengine.storage import Store, transport_errors
from pipelines.errors import RunError
from pipelines.regate import shard_samples

Run = Store | str | Path  # a run folder, a URL (s3://bucket/run) or a Store

_BLOCK_ELEMENTS = 1 << 24  # entries of one block of a cluster's similarity matrix (64 MiB of float32)
_HISTOGRAM_BINS = 200  # over [lowest similarity or 1 - largest eps, rounded down to 0.1; 1]


class SemDeDupConfig(Config):
    """How ``semdedup`` clusters a run's embeddings and when two clips count as duplicates."""

    clusters: int | None = Field(None, ge=1, description="k of k-means; None: ceil(sqrt(n / 2)), capped at n")
    eps: float = Field(
        0.05, gt=0, lt=2, description="a clip is a duplicate when its cosine similarity to a clip ranked "
        "before it in its cluster is above 1 - eps"
    )  # fmt: skip
    eps_sweep: list[float] = Field(
        default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.2],
        description="eps values whose removal counts are reported (eps itself is always added)",
    )
    seed: int = Field(0, description="k-means seed: same seed, same embeddings, same result")
    max_iter: int = Field(100, ge=1, description="k-means iterations at most")
    minibatch_above: int = Field(
        100_000, ge=1, description="more clips than this: MiniBatchKMeans instead of KMeans"
    )


@dataclass(frozen=True)
class Duplicate:
    """A removed clip: the clip before it in its cluster it is most similar to, and how similar."""

    clip_id: str
    duplicate_of: str
    similarity: float
    cluster: int


@dataclass
class DedupReport:
    """What ``semdedup`` found. ``keep`` holds every ok clip not removed, unembedded ones included."""

    config: SemDeDupConfig
    n: int  # ok clips with an embedding
    dim: int
    clusters: int
    sweep: dict[float, int]  # eps -> clips removed at that eps
    keep: list[str]
    removed: list[Duplicate]
    not_embedded: list[str]  # ok clips without an embedding: kept
    # bin edges and counts of each clip's highest similarity to another clip of its cluster
    histogram: tuple[list[float], list[int]]

    def as_json(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "n": self.n,
            "dim": self.dim,
            "clusters": self.clusters,
            "eps": self.config.eps,
            "kept": len(self.keep),
            "removed": len(self.removed),
            "not_embedded": len(self.not_embedded),
            "sweep": [{"eps": eps, "removed": count} for eps, count in sorted(self.sweep.items())],
            "max_similarity_histogram": {"edges": self.histogram[0], "counts": self.histogram[1]},
        }


# --- reading -----------------------------------------------------------------------------------------------


def ok_clip_embeddings(run: Run) -> tuple[list[str], np.ndarray, list[str]]:
    """The ok clips' ids and ``(n, D)`` float32 embeddings, and the ok clips that have none.

    Raises:
        FileNotFoundError: the run has no manifest.
        RunError: no embeddings at all, or vectors of different lengths.
    """
    store = Store(run)
    if not any(n.endswith(".parquet") for n in store.listdir("manifest")):
        raise FileNotFoundError(f"{store.url} has no manifest/*.parquet: is it the --out of dataengine run?")
    embedded = set(store.listdir("embeddings"))
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    missing: list[str] = []
    for part, rows in iter_manifest_parts(store, columns=["clip_id", "status"]):
        ok = set(rows.filter(pc.equal(rows["status"], "ok"))["clip_id"].to_pylist())
        part_ids: list[str] = []
        if part in embedded and ok:
            part_ids, part_vectors = _read_part(store, part, ok)
            if part_ids:
                ids += part_ids
                vectors.append(part_vectors)
        missing += sorted(ok - set(part_ids))
    if not ids:
        raise RunError(
            f"{store.url} has no clip embeddings (embeddings/*.parquet) for its ok clips: it was written "
            "without an embedder. Run its inputs again into a new --out with one enabled, e.g. dataengine "
            "run INPUTS --out NEW --set filters.embed.kind=descriptor (a rerun on the same --out skips the "
            "clips it has)"
        )
    dims = {v.shape[1] for v in vectors}
    if len(dims) > 1:
        raise RunError(f"{store.url}: clip embeddings of different lengths {sorted(dims)}")
    emb_ND = np.concatenate(vectors)
    emb_ND /= np.maximum(np.linalg.norm(emb_ND, axis=1, keepdims=True), 1e-12)  # cosine needs unit vectors
    return ids, emb_ND, missing


def _read_parquet(store: Store, *parts: str, columns: list[str] | None = None) -> pa.Table:
    with transport_errors(store.uri(*parts)), store.fs.open(store.path(*parts), "rb") as f:
        return pq.read_table(f, columns=columns)


def _read_part(store: Store, part: str, ok: set[str]) -> tuple[list[str], np.ndarray]:
    table = _read_parquet(store, "embeddings", part, columns=["clip_id", "clip_emb"])
    wanted = pc.and_(
        pc.is_in(table["clip_id"], pa.array(sorted(ok), pa.string())), pc.is_valid(table["clip_emb"])
    )
    table = table.filter(wanted)
    lengths = pc.list_value_length(table["clip_emb"]).to_numpy(zero_copy_only=False)
    if len(set(lengths.tolist())) > 1:
        found = sorted(set(lengths.tolist()))
        raise RunError(f"{store.uri('embeddings', part)}: clip_emb vectors of different lengths {found}")
    flat = pc.list_flatten(table["clip_emb"]).to_numpy(zero_copy_only=False).astype(np.float32)
    dim = int(lengths[0]) if len(lengths) else 0
    return table["clip_id"].to_pylist(), flat.reshape(len(table), dim)


# --- SemDeDup ----------------------------------------------------------------------------------------------


def semdedup(run: Run, config: SemDeDupConfig) -> DedupReport:
    """SemDeDup over the run's ok clips (the rule is in the module docstring).

    Raises:
        FileNotFoundError: no manifest. RunError: no embeddings (see ``ok_clip_embeddings``).
    """
    ids, emb_ND, missing = ok_clip_embeddings(run)
    n = len(ids)
    k = min(n, config.clusters or math.ceil(math.sqrt(n / 2)))
    labels_N = cluster(emb_ND, k, config)
    prior_N, earlier_N, max_N = np.zeros(n, np.float32), np.arange(n), np.zeros(n, np.float32)
    by_cluster = np.argsort(labels_N, kind="stable")
    bounds = np.searchsorted(labels_N[by_cluster], np.arange(k + 1))
    for start, end in itertools.pairwise(bounds.tolist()):
        members = by_cluster[start:end]
        if not len(members):
            continue  # k-means may leave a cluster empty
        members = members[_farthest_first(emb_ND[members], [ids[i] for i in members])]
        prior, earlier, most = cluster_similarities(emb_ND[members])
        prior_N[members], earlier_N[members], max_N[members] = prior, members[earlier], most
    sweep_eps = sorted({*config.eps_sweep, config.eps})
    removed_mask = prior_N > 1 - config.eps
    removed = [
        Duplicate(ids[i], ids[earlier_N[i]], float(prior_N[i]), int(labels_N[i]))
        for i in np.flatnonzero(removed_mask)
    ]
    finite = max_N[~np.isnan(max_N)]
    low = math.floor(10 * min(float(finite.min(initial=1.0)), 1 - max(sweep_eps))) / 10
    counts, edges = np.histogram(finite, bins=_HISTOGRAM_BINS, range=(max(low, -1.0), 1.0))
    return DedupReport(
        config=config,
        n=n,
        dim=emb_ND.shape[1],
        clusters=k,
        sweep={eps: int((prior_N > 1 - eps).sum()) for eps in sweep_eps},
        keep=sorted([ids[i] for i in np.flatnonzero(~removed_mask)] + missing),
        removed=sorted(removed, key=lambda d: d.clip_id),
        not_embedded=missing,
        histogram=(edges.tolist(), counts.tolist()),
    )


def cluster(emb_ND: np.ndarray, k: int, config: SemDeDupConfig) -> np.ndarray:
    """k-means labels ``(N,)`` of the embeddings (MiniBatchKMeans above ``config.minibatch_above`` clips).

    Centroids start at k random clips, one run, as faiss's k-means the paper used does: k-means++ seeding
    costs more than the clustering here (scikit-learn computes its distances in float64), and SemDeDup only
    needs clusters that keep near duplicates together."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if k == 1:
        return np.zeros(len(emb_ND), np.int64)
    common = {"init": "random", "n_init": 1, "random_state": config.seed, "max_iter": config.max_iter}
    if len(emb_ND) > config.minibatch_above:
        return np.asarray(MiniBatchKMeans(k, batch_size=4096, **common).fit_predict(emb_ND))
    return np.asarray(KMeans(k, **common).fit_predict(emb_ND))


def _farthest_first(emb_MD: np.ndarray, ids: list[str]) -> np.ndarray:
    """Indices ordering one cluster by cosine distance to its normalised centroid, farthest first."""
    centroid_D = emb_MD.mean(axis=0)
    centroid_D /= max(float(np.linalg.norm(centroid_D)), 1e-12)
    distance_M = 1.0 - emb_MD @ centroid_D
    return np.lexsort((np.array(ids), -distance_M))


def cluster_similarities(emb_MD: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the clips of one cluster, in their SemDeDup order: each clip's highest cosine similarity to an
    earlier clip (``M``; -1 for the first clip), the index of that clip, and its highest similarity to any
    other clip of the cluster (NaN for a cluster of one). Column blocks bound the memory."""
    m = len(emb_MD)
    prior, earlier = np.full(m, -1.0, np.float32), np.zeros(m, np.int64)
    most = np.full(m, np.nan, np.float32)
    block = max(1, _BLOCK_ELEMENTS // max(m, 1))
    rows = np.arange(m)[:, None]
    for start in range(0, m, block):
        cols = np.arange(start, min(m, start + block))
        sim_MB = (emb_MD @ emb_MD[cols].T).astype(np.float32)
        sim_MB[rows == cols[None, :]] = -np.inf
        if m > 1:
            most[cols] = sim_MB.max(axis=0)
        sim_MB[rows > cols[None, :]] = -np.inf  # keep i < j only
        best = sim_MB.argmax(axis=0)
        found = cols > 0
        prior[cols[found]] = sim_MB[best[found], np.flatnonzero(found)]
        earlier[cols] = best
    return prior, earlier, most


# --- writing -----------------------------------------------------------------------------------------------


def write_report(run: Run, report: DedupReport) -> str:
    """Write the run's ``dedup/``: ``keep.parquet`` (``clip_id``), ``removed.parquet`` (``clip_id``,
    ``duplicate_of``, ``similarity``, ``cluster``), ``report.json`` and ``similarity.png``, each atomically.
    Returns the folder's path or URL."""
    store = Store(run)
    keep = pa.table({"clip_id": pa.array(report.keep, pa.string())})
    removed = pa.table(
        {
            "clip_id": pa.array([d.clip_id for d in report.removed], pa.string()),
            "duplicate_of": pa.array([d.duplicate_of for d in report.removed], pa.string()),
            "similarity": pa.array([d.similarity for d in report.removed], pa.float32()),
            "cluster": pa.array([d.cluster for d in report.removed], pa.int32()),
        }
    )
    _write_parquet(store, keep, "dedup", "keep.parquet")
    _write_parquet(store, removed, "dedup", "removed.parquet")
    store.write_bytes("dedup", "report.json", data=(json.dumps(report.as_json(), indent=2) + "\n").encode())
    figure = io.BytesIO()
    _plot(figure, report)
    store.write_bytes("dedup", "similarity.png", data=figure.getvalue())
    return store.uri("dedup")


def _write_parquet(store: Store, table: pa.Table, *parts: str) -> None:
    with store.writing(*parts) as f:
        pq.write_table(table, f)


def _plot(path: io.BytesIO, report: DedupReport) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges, counts = report.histogram
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.stairs(counts, edges, fill=True, alpha=0.6)
    for eps, removed in sorted(report.sweep.items()):
        chosen = eps == report.config.eps
        label = f"eps={eps:g}: {removed} removed"
        ax.axvline(
            1 - eps, color="tab:red" if chosen else "gray", ls="-" if chosen else ":", lw=1, label=label
        )
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("each clip's highest cosine similarity to another clip of its cluster")
    ax.set_ylabel("clips")
    ax.set_yscale("symlog")
    ax.set_title(f"SemDeDup: {report.n} clips, {report.clusters} clusters")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def rewrite_shards(run: Run, out: Run, keep: list[str] | None = None) -> int:
    """A new run at ``out`` (a folder or a URL) holding only the ok samples whose id is in ``keep``
    (default: the run's ``dedup/keep.parquet``): shards (one stream per bucket, as the run had them), a
    manifest (their rows as the run recorded them) and their embeddings. Returns the samples written.

    Raises:
        ConfigError: ``out`` already holds shards, or is the run itself.
    """
    source, target = Store(run), Store(out)
    if target.url == source.url or target.listdir("shards"):
        raise ConfigError(f"--rewrite {target.url}: give a new folder (it must not hold shards already)")
    if keep is None:
        keep = _read_parquet(source, "dedup", "keep.parquet", columns=["clip_id"])["clip_id"].to_pylist()
    wanted = set(keep)
    rows = {r["clip_id"]: r for r in read_manifest(source).to_pylist() if r["clip_id"] in wanted}
    written = 0
    with contextlib.ExitStack() as stack:
        writers: dict[str | None, ShardWriter] = {}  # one per bucket: shards stay of one latent shape
        for raw in shard_samples(source):
            key = raw["__key__"]
            if key in rows:
                sample = {k: v for k, v in raw.items() if not k.startswith("__")}
                row = {k: v for k, v in rows[key].items() if k not in ("shard", "status")}
                bucket = row["bucket"]
                if bucket not in writers:
                    part = "00000" if bucket is None else f"00000-{bucket}"
                    writers[bucket] = stack.enter_context(ShardWriter(target, ShardConfig(), part))
                writers[bucket].write(key, sample, row)
                written += 1
    _copy_embeddings(source, target)
    return written


def _copy_embeddings(source: Store, target: Store) -> None:
    """``embeddings/{stem}.parquet`` of the new run: the kept clips' vectors, part by new manifest part."""
    found = [n for n in source.listdir("embeddings") if n.endswith(".parquet")]
    if not found:
        return
    columns = ["clip_id", "clip_emb"]
    vectors = pa.concat_tables([_read_parquet(source, "embeddings", n, columns=columns) for n in found])
    for part, ids in iter_manifest_parts(target, columns=["clip_id"]):
        mine = vectors.filter(pc.is_in(vectors["clip_id"], ids["clip_id"]))
        _write_parquet(target, mine, "embeddings", part)
