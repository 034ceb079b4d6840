"""Streaming shard loader: shard list -> split by node -> by worker -> shuffle -> decode -> bucket -> batch.

Each step is a small function below, in that order. Shards are local paths, globs, brace patterns
(``shards-{000000..000099}.tar``), runs (a ``dataengine run --out`` folder or URL such as ``s3://bucket/run``:
its ``shards/*.tar``), ``http(s)://`` or ``s3://`` URLs of tars (through fsspec) or ``pipe:`` commands.
``data.buckets`` keeps only the shards of some shard buckets (latent shapes, ``video-5x30x40``), as the runs'
manifests record them; it needs runs, not tar patterns. Every epoch shuffles the shard list with ``seed +
epoch`` (the same order on every rank), gives rank r every world-th shard and worker w of that every n-th,
shuffles samples in a seeded buffer, normalises latents with the stats their VAE recorded, and groups
samples of one latent shape into a batch (no padding of latents; text tokens are padded, with a mask).

A keep-list (``data.keep_list``: a ``keep.parquet`` with a ``clip_id`` column, a text file of one id per
line, or a run folder whose ``dedup/keep.parquet`` is used) drops, right after reading, every sample whose
``__key__`` it does not hold; the shards stay as they are. It applies only when set: a run folder with a
``dedup/keep.parquet`` given as ``shards`` is read whole, with a log line saying how to apply its keep-list.

The stream is a deterministic function of (seed, rank, world size, workers): batch g of a rank comes from
worker ``g % workers`` (the DataLoader reads workers round-robin), so a resumed run rebuilds the loader with
``start_batch`` and each worker replays, without yielding, the batches it produced before. The data order of
a resumed run is the one of an uninterrupted run.

Legend: ``latents_BCTHW`` float32 normalised latents; ``text_BLD`` float32 text states, ``text_mask_BL`` bool.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import braceexpand
import fsspec
import numpy as np
import pyarrow.parquet as pq
import torch
from pydantic import Field
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from dataengine.config import Config, ConfigError
from dataengine.encode.vae import normalization
from dataengine.shards import read_manifest
from dataengine.storage import Store

log = logging.getLogger(__name__)


class Phase(Config):
    """A stretch of the curriculum: until ``until_step`` (None: the end), this share of batches are images."""

    until_step: int | None = Field(None, ge=1)
    image_ratio: float = Field(0.0, ge=0, le=1, description="share of batches of T=1 samples (images)")


class DataConfig(Config):
    shards: list[str] = Field(
        default_factory=list, description="paths, globs, brace patterns, run dirs, URLs"
    )
    batch_size: int = Field(8, ge=1)
    num_workers: int = Field(2, ge=0)
    prefetch_factor: int = Field(2, ge=1)
    shuffle_buffer: int = Field(256, ge=1)
    seed: int = 0
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for URLs")
    buckets: list[str] | None = Field(
        None,
        description="train only on these shard buckets (e.g. video-5x30x40, image-1x32x32: the manifest's "
        "bucket column; dataengine inspect lists them); needs runs as shards; None: every bucket",
    )
    keep_list: str | None = Field(
        None,
        description="train only on these clip ids: a keep.parquet (clip_id column), a text file of one id "
        "per line, or a run folder (its dedup/keep.parquet, from dataengine dedup); paths or URLs",
    )
    curriculum: list[Phase] = Field(
        default_factory=lambda: [Phase(image_ratio=0.0)], description="phases in order; the last one runs on"
    )


# --- shard list --------------------------------------------------------------------------------------------


def expand_shards(
    specs: list[str], storage_options: dict[str, Any] | None = None, buckets: list[str] | None = None
) -> list[str]:
    """Every shard URL the specs name, sorted and without duplicates; with ``buckets``, only the shards of
    runs whose manifest rows are of those buckets.

    Raises:
        ConfigError: a spec that names no shard; ``buckets`` with a spec that is not a run.
    """
    urls: list[str] = []
    for spec in specs:
        found = []
        for pattern in braceexpand.braceexpand(spec):
            run = _run(pattern, storage_options)
            if run is not None:
                found += _run_shards(run, buckets)
            elif buckets is not None:
                raise ConfigError(
                    "data.buckets needs runs (a dataengine run --out folder or URL) to read the buckets from "
                    f"their manifests; {spec!r} names tar files. Give the run instead, or unset data.buckets"
                )
            else:
                found += _expand_one(pattern, storage_options)
        if not found:
            wanted = f" of buckets {buckets}" if buckets is not None else ""
            raise ConfigError(
                f"no shards{wanted} found for {spec!r}: give .tar files, a glob, or a run's --out folder"
            )
        urls += found
    return sorted(set(urls))


def _run(pattern: str, storage_options: dict[str, Any] | None) -> Store | None:
    """The run (or folder of tars) ``pattern`` names, as a Store; None for tars, globs and ``pipe:``."""
    if pattern.startswith("pipe:") or any(c in pattern for c in "*?[") or pattern.endswith(".tar"):
        return None
    if "://" not in pattern or pattern.startswith("file://"):
        path = Path(pattern.removeprefix("file://"))
        return Store(path) if path.is_dir() else None
    if pattern.split("://", 1)[0] in ("http", "https"):
        return None  # no listing over http: name the tars
    store = Store(pattern, storage_options)
    return store if store.listdir("shards") or store.listdir() else None


def _run_shards(run: Store, buckets: list[str] | None) -> list[str]:
    """A run's shards (``shards/*.tar``; a folder of tars: its own), those of ``buckets`` only when given."""
    inner = ("shards",) if run.listdir("shards") else ()
    names = [n for n in run.listdir(*inner) if n.endswith(".tar") and not n.startswith(".")]
    if buckets is None:
        return [run.uri(*inner, n) for n in names]
    if not inner or not run.listdir("manifest"):
        raise ConfigError(
            f"data.buckets: {run.url} is not a run (no shards/ and manifest/ to read buckets from)"
        )
    table = read_manifest(run, columns=["shard", "bucket"])
    found = dict(zip(table["shard"].to_pylist(), table["bucket"].to_pylist(), strict=True))
    present = sorted({b for b in found.values() if b is not None})
    if not set(buckets) & set(present):
        raise ConfigError(
            f"data.buckets={buckets}: {run.url} has none of them; its buckets: {present or 'none'}"
        )
    return [run.uri("shards", n) for n in names if found.get(n) in buckets]


def _expand_one(pattern: str, storage_options: dict[str, Any] | None) -> list[str]:
    if pattern.startswith("pipe:"):
        return [pattern]
    if "://" in pattern and not pattern.startswith("file://"):
        if not any(c in pattern for c in "*?["):
            return [pattern]
        fs, _, paths = fsspec.get_fs_token_paths(pattern, storage_options=storage_options or {})
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return [f"{protocol}://{p}" for p in paths]
    return sorted(glob.glob(pattern.removeprefix("file://"), recursive=True))  # noqa: PTH207  # ** and []


def split_shards(
    urls: list[str], epoch: int, seed: int, rank: int, world: int, worker: int, workers: int
) -> list[str]:
    """This worker's shards for ``epoch``: a seeded shuffle shared by all ranks, then by node, by worker."""
    order = list(urls)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[rank::world][worker::workers]


def check_enough_shards(n_shards: int, world: int, workers: int) -> None:
    """ConfigError when some rank/worker would get no shard: distributed training would then hang."""
    readers = world * max(workers, 1)
    if n_shards < readers:
        raise ConfigError(
            f"{n_shards} shards for {world} ranks x {max(workers, 1)} loader workers: some would read "
            "nothing and distributed training would hang. Write smaller shards (dataengine run --set "
            "shards.max_samples=N), or lower data.num_workers or the number of ranks."
        )


# --- samples -----------------------------------------------------------------------------------------------


def _open(url: str, storage_options: dict[str, Any]) -> IO[bytes]:
    if url.startswith("pipe:"):
        import subprocess

        proc = subprocess.Popen(url.removeprefix("pipe:"), shell=True, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        return proc.stdout
    if "://" in url and not url.startswith("file://"):
        opened: IO[bytes] = fsspec.open(url, "rb", **storage_options).open()
        return opened
    return Path(url.removeprefix("file://")).open("rb")  # closed by raw_samples


def raw_samples(urls: list[str], storage_options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Samples as webdataset groups them: ``{"__key__", "latents.npy": bytes, ...}``, shard by shard."""
    for url in urls:
        stream = _open(url, storage_options)
        try:
            yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
        finally:
            stream.close()


def read_keep_list(spec: str, storage_options: dict[str, Any] | None = None) -> frozenset[str]:
    """The clip ids a keep-list holds (``DataConfig.keep_list``): a parquet file's ``clip_id`` column, a run
    folder's ``dedup/keep.parquet``, or any other file read as whitespace-separated ids.

    Raises:
        ConfigError: no such file, a folder without ``dedup/keep.parquet``, a parquet without ``clip_id``.
    """
    fs, path = fsspec.core.url_to_fs(spec, **(storage_options or {}))
    if fs.isdir(path):
        path = f"{path.rstrip('/')}/dedup/keep.parquet"
        if not fs.exists(path):
            raise ConfigError(
                f"data.keep_list={spec!r} has no dedup/keep.parquet: run dataengine dedup on it"
            )
    elif not fs.exists(path):
        raise ConfigError(f"data.keep_list={spec!r}: no such file")
    with fs.open(path, "rb") as f:
        if not path.endswith(".parquet"):
            return frozenset(f.read().decode().split())
        parquet = pq.ParquetFile(f)
        if "clip_id" not in parquet.schema_arrow.names:
            raise ConfigError(f"data.keep_list={spec!r}: {path} has no clip_id column")
        return frozenset(parquet.read(columns=["clip_id"]).column("clip_id").drop_null().to_pylist())


def kept(samples: Iterator[dict[str, Any]], keep: frozenset[str] | None, counts: list[int]) -> Iterator[Any]:
    """The samples whose ``__key__`` is in ``keep`` (all when None); ``counts`` gets [seen, skipped]."""
    for raw in samples:
        counts[0] += 1
        if keep is None or raw["__key__"] in keep:
            yield raw
        else:
            counts[1] += 1


def shuffled(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A seeded shuffle buffer of ``size`` items."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


@dataclass
class Decoded:
    key: str
    latents_CTHW: np.ndarray
    text_LD: np.ndarray
    text_mask_L: np.ndarray

    @property
    def is_image(self) -> bool:
        return self.latents_CTHW.shape[1] == 1


def decode(raw: dict[str, Any]) -> Decoded:
    """Normalised float32 latents and (L, D) text states with their mask."""
    meta = json.loads(raw["json"])
    latents = np.load(io.BytesIO(raw["latents.npy"])).astype(np.float32)
    mean, scale = normalization(meta["vae"])
    latents = (latents - mean[:, None, None, None]) * scale[:, None, None, None]
    if "text_emb.npy" not in raw:
        raise ValueError(
            f"sample {raw['__key__']} has no text_emb.npy: run with a text encoder (recipe.text)"
        )
    text = np.load(io.BytesIO(raw["text_emb.npy"])).astype(np.float32)
    if text.ndim == 1:
        return Decoded(raw["__key__"], latents, text[None], np.ones(1, bool))
    mask = np.load(io.BytesIO(raw["text_mask.npy"])) if "text_mask.npy" in raw else np.ones(len(text), bool)
    return Decoded(raw["__key__"], latents, text, mask.astype(bool))


def collate(samples: list[Decoded]) -> dict[str, Any]:
    """One batch: stacked latents (one shape), text padded to the longest, a mask, the keys."""
    longest = max(len(s.text_LD) for s in samples)
    text = np.zeros((len(samples), longest, samples[0].text_LD.shape[1]), np.float32)
    mask = np.zeros((len(samples), longest), bool)
    for i, s in enumerate(samples):
        text[i, : len(s.text_LD)], mask[i, : len(s.text_LD)] = s.text_LD, s.text_mask_L
    return {
        "latents_BCTHW": torch.from_numpy(np.stack([s.latents_CTHW for s in samples])),
        "text_BLD": torch.from_numpy(text),
        "text_mask_BL": torch.from_numpy(mask),
        "keys": [s.key for s in samples],
    }


# --- the stream --------------------------------------------------------------------------------------------


class ShardStream(IterableDataset[dict[str, Any]]):
    """Endless batches for one rank; see the module docstring for the order and how resume replays it."""

    def __init__(
        self,
        urls: list[str],
        config: DataConfig,
        rank: int,
        world: int,
        start_batch: int,
        batches_per_step: int,
        keep: frozenset[str] | None = None,
    ) -> None:
        self.urls, self.config, self.rank, self.world = urls, config, rank, world
        self.start_batch, self.batches_per_step = start_batch, batches_per_step
        self.keep = keep  # clip ids to train on (the keep-list); None: every sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        check_enough_shards(len(self.urls), self.world, workers)
        batch_index = worker  # global index (within this rank) of this worker's next batch
        for batch in self._batches(worker, workers):
            if batch_index >= self.start_batch:
                yield batch
            batch_index += workers

    def _batches(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        cfg = self.config
        buckets: dict[tuple[int, ...], list[Decoded]] = {}
        produced = 0
        for epoch in itertools.count():
            mine = split_shards(self.urls, epoch, cfg.seed, self.rank, self.world, worker, workers)
            rng = random.Random(hash((cfg.seed, epoch, self.rank, worker)))
            counts = [0, 0]
            samples = kept(raw_samples(mine, cfg.storage_options), self.keep, counts)
            for raw in shuffled(samples, cfg.shuffle_buffer, rng):
                sample = decode(raw)
                bucket = buckets.setdefault(sample.latents_CTHW.shape, [])
                bucket.append(sample)
                ready = self._ready(buckets, worker + produced * workers)
                if ready is not None:
                    yield collate(buckets.pop(ready))
                    produced += 1
            if epoch == 0 and self.keep is not None:
                log.info("rank %d worker %d: the keep-list skipped %d of %d samples", self.rank, worker,
                         counts[1], counts[0])  # fmt: skip
            if produced == 0:
                sizes = {str(list(shape)): len(items) for shape, items in buckets.items()}
                skipped = (
                    f" ({counts[1]} of {counts[0]} skipped by data.keep_list)"
                    if self.keep is not None
                    else ""
                )
                raise ConfigError(
                    f"a whole pass over this worker's shards made no batch of {cfg.batch_size}: samples per "
                    f"latent shape {sizes or '{}'}{skipped}; lower data.batch_size or use more data"
                )
            buckets.clear()  # partial batches of an epoch are dropped: every epoch ends the same way

    def _ready(
        self, buckets: dict[tuple[int, ...], list[Decoded]], batch_index: int
    ) -> tuple[int, ...] | None:
        """The shape of the next batch to emit: a full bucket of the kind (image or video) the curriculum
        draws for this batch; the other kind when the drawn one has nothing buffered for a while."""
        full = [shape for shape, items in buckets.items() if len(items) >= self.config.batch_size]
        if not full:
            return None
        ratio = self.image_ratio(batch_index // self.batches_per_step)
        want_image = random.Random(hash((self.config.seed, self.rank, batch_index))).random() < ratio
        matching = [shape for shape in full if (shape[1] == 1) == want_image]
        if matching:
            return matching[0]
        waiting = sum(len(v) for v in buckets.values())  # bounded: the data may lack the drawn kind
        return full[0] if waiting >= 4 * self.config.shuffle_buffer else None

    def image_ratio(self, step: int) -> float:
        for phase in self.config.curriculum:
            if phase.until_step is None or step < phase.until_step:
                return phase.image_ratio
        return self.config.curriculum[-1].image_ratio


def build_loader(
    config: DataConfig, rank: int, world: int, start_batch: int = 0, batches_per_step: int = 1
) -> DataLoader[dict[str, Any]]:
    """The DataLoader of one rank, starting at batch ``start_batch`` of its stream."""
    urls = expand_shards(config.shards, config.storage_options, config.buckets)
    check_enough_shards(len(urls), world, config.num_workers)
    stream = ShardStream(urls, config, rank, world, start_batch, batches_per_step, _keep(config))
    extra: dict[str, Any] = {"prefetch_factor": config.prefetch_factor} if config.num_workers else {}
    pin = torch.cuda.is_available()  # page-locked batches copy to the GPU asynchronously
    return DataLoader(stream, batch_size=None, num_workers=config.num_workers, pin_memory=pin, **extra)


def _keep(config: DataConfig) -> frozenset[str] | None:
    """The keep-list's ids, logged; None without one (and a hint when a run folder has a dedup keep-list)."""
    if config.keep_list is None:
        for spec in config.shards:
            if "://" not in spec and (Path(spec) / "dedup" / "keep.parquet").is_file():
                log.info(
                    "%s has dedup/keep.parquet, not applied: set data.keep_list=%s to train on it", spec, spec
                )
        return None
    keep = read_keep_list(config.keep_list, config.storage_options)
    log.info("keep-list %s: %d clip ids; samples not in it are skipped", config.keep_list, len(keep))
    return keep


def peek(config: DataConfig) -> dict[str, Any]:
    """What the model and the sampler need to know about the data, read from the first sample: latent
    channels, text dims, the VAE info and the text encoder config."""
    urls = expand_shards(config.shards, config.storage_options, config.buckets)
    raw = next(raw_samples(urls[:1], config.storage_options))
    meta = json.loads(raw["json"])
    sample = decode(raw)
    return {
        "latent_channels": int(sample.latents_CTHW.shape[0]),
        "latent_shape": list(sample.latents_CTHW.shape),
        "fps": float(meta.get("fps") or 8.0),
        "text_dim": int(sample.text_LD.shape[1]),
        "vae": meta["vae"],
        "text_encoder": meta.get("text_encoder"),
        "shards": len(urls),
    }
