"""``dataengine run``: inputs -> shards on Ray, one actor pool per step, resumable exactly once.

    dataengine run data/videos --out out/run --recipe demo          # local Ray sized to this machine
    dataengine run s3://bucket/videos/ --out s3://bucket/runs/r1 --recipe gpu-qwen25vl-7b-wan --address auto
    dataengine run inputs.txt --out s3://bucket/runs/r1 --partition 0/4 ...   # one of 4 drivers, one output

The driver streams sources in (never the whole list at once), moves work items between the pools
(probe+split -> decode+filter -> caption -> encode -> writers), and pauses a step while the queue after it is
full (backpressure). It routes ids, statuses and object references only: samples go from the encode workers to
the writer actors (``pipelines.writers``) through Ray's object store, and the writers put their shards and
manifest parts straight into ``--out`` (a folder or an fsspec URL such as ``s3://``). Failure rows, which
carry no sample bytes, are written by the driver as failures-only manifest parts.

Curation happens before the expensive step: the decode workers score each clip and drop what the filters
refuse (``dataengine.curate.filters``); the driver then asks its duplicate index (exact digests and
perceptual hashes, ``dataengine.curate.dedup``) whether a clip repeats one already kept, and drops it
before captioning if so. The index is seeded on resume from the committed rows of kept clips, so what was
committed is decided the same way again.

Resume: the manifest is the ledger. A clip is done once a committed manifest part holds its row (a sample
or a failure); a video is done once a video-level failure row names it; a video whose split finished has a
row in ``splits/`` and is never probed or split again (``pipelines.ledger``, on disk: the driver's memory
does not grow with the run). On start the runner removes what a killed run left under its names
(``cleanup_partials``: partial files, shards without a manifest part, unfinished multipart uploads), reads
the ledger, and skips what is done, so a rerun of the same command after ``kill -9`` of the driver or of any
worker ends with the clip set of an uninterrupted run: nothing twice, nothing lost.

Partitions (``--partition i/N``): each driver takes the inputs whose URI hashes to slice i and names its
files with ``p{i}of{N}-``, so N drivers (or RayJobs) write one output without collisions and every reader sees
one run. Near-duplicates are found within a partition; ``dataengine dedup`` works across the whole run.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

from dataengine.config import ConfigError
from dataengine.inputs import iter_sources
from dataengine.records import Clip, Failure, Fingerprint, Source, StageName
from dataengine.samples import failure_row
from dataengine.shards import ShardWriter, cleanup_partials
from dataengine.stages import DecodeStage, ProbeStage, SplitStage, Stage
from dataengine.stages.caption import CaptionStage
from dataengine.stages.filter import FilterStage, LearnedStage
from dataengine.stages.sample import SampleConfig, SampleStage
from dataengine.storage import Store
from pipelines.errors import RunError
from pipelines.ledger import Ledger, SplitLog, cleanup_splits
from pipelines.pools import Done, Pool, WorkItem
from pipelines.recipes import RecipeConfig
from pipelines.writers import Writers

log = logging.getLogger(__name__)

STEPS: tuple[StageName, ...] = ("probe", "decode", "caption", "encode")


def build_stages(step: StageName, recipe: RecipeConfig) -> Sequence[Stage[Any, Any]]:
    """The stages one worker of ``step`` runs (module level, so Ray can ship it to workers)."""
    if step == "probe":
        return [ProbeStage(recipe.probe), SplitStage(recipe.split)]
    if step == "decode":
        return [DecodeStage(recipe.decode), FilterStage(recipe.filters)]
    if step == "caption":  # the filters' towers first, where the GPU is (none: no stage)
        learned = [LearnedStage(recipe.filters)] if recipe.filters.learned else []
        return [*learned, CaptionStage(recipe.caption)]
    preview = "caption" if "caption" in recipe.decode.views else recipe.encode.view
    config = SampleConfig(
        encode=recipe.encode,
        text=recipe.text,
        preview_view=preview,
        caption_match=recipe.filters.caption_match,
        match_view=recipe.filters.view,
    )
    return [SampleStage(config)]


@dataclass
class Counts:
    """Progress of a run; ``stage`` counters are keyed by step name."""

    sources: int = 0
    sources_done: bool = False
    videos: int = 0  # sources the probe step finished with, either way
    resumed_clips: int = 0
    clips_found: int = 0
    ok: Counter[str] = field(default_factory=Counter)
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (stage, status) -> n
    samples: int = 0  # committed: their shard's manifest part is written
    shards: int = 0
    replayed: int = 0  # videos whose committed split was read back instead of probing them again
    writers: int = 0
    writer_deaths: int = 0

    @property
    def failures(self) -> int:
        return sum(self.failed.values())


Replay = list[Clip | Failure]  # what a finished split made, read back from the ledger instead of probing
Partition = tuple[int, int]  # (i, n): this driver takes the i-th of n slices of the inputs


def partition_name(partition: Partition) -> str:
    """``p01of04``: the name partition (i, n)'s own files start with (shards, splits, run records)."""
    return f"p{partition[0]:02d}of{partition[1]:02d}"


def output_store(recipe: RecipeConfig, out: Store | str | Path) -> Store:
    """The run's output as a ``Store``, with the recipe's storage options for its protocol."""
    if isinstance(out, Store):
        return out
    text = str(out)
    protocol = text.split("://", 1)[0] if "://" in text else "file"
    return Store(text, recipe.output.storage_options.get(protocol, {}))


def partition_of(uri: str, n: int) -> int:
    """The partition (of ``n``) an input belongs to: a stable hash of its URI, the same in every driver."""
    return int.from_bytes(hashlib.blake2b(uri.encode(), digest_size=8).digest(), "big") % n


class Runner:
    """Drives the pools of one run. ``run()`` returns the counts; progress goes to ``on_progress``.

    ``out`` is a folder or an fsspec URL (``s3://bucket/run``); ``partition=(i, n)`` makes this driver one of
    ``n`` sharing ``out`` (module docstring).
    """

    def __init__(
        self,
        recipe: RecipeConfig,
        specs: Sequence[str],
        out: Store | str | Path,
        on_progress: Callable[[Counts, dict[str, Pool]], None] | None = None,
        partition: Partition | None = None,
    ) -> None:
        self.recipe, self.specs, self.out = recipe, list(specs), out
        self.on_progress = on_progress
        if partition is not None and not 0 <= partition[0] < partition[1]:
            raise ConfigError(f"partition {partition[0]}/{partition[1]}: need 0 <= i < N in i/N")
        self.partition = partition
        self.tag = "" if partition is None else f"{partition_name(partition)}-"
        self.counts = Counts()
        self.pools: dict[str, Pool] = {}
        self.writers: Writers | None = None
        self._fingerprints: dict[str, Fingerprint] = {}  # clips past the duplicate index, until their row

    def run(self) -> Counts:
        try:
            store = output_store(self.recipe, self.out)
            cleanup_partials(store, f"{self.recipe.shards.prefix}-{self.tag}")
            cleanup_splits(store, self.tag)
            ledger, self.duplicates = Ledger.read(store, self.recipe.dedup)
            failures = ShardWriter(store, self.recipe.shards, f"{self.tag}failures")
            self.splits = SplitLog(store, self.tag, every_s=self.recipe.runner.splits_commit_s)
        except OSError as exc:
            raise RunError(f"cannot write the run to {self.out}: {exc}; choose a writable --out") from exc
        self.ledger = ledger
        self.counts.resumed_clips = ledger.resumed_clips
        sources = self._sources()
        self._start_pools()
        try:
            self.writers = Writers(store, self.recipe.shards, self.recipe.output, self.tag)
            self.counts.writers = len(self.writers.slots)
            with failures:
                self._loop(sources, failures)
                self.splits.commit()
        finally:
            for pool in self.pools.values():
                pool.shutdown()
            if self.writers is not None:
                self.writers.shutdown()
            ledger.close()
        return self.counts

    # --- sources ----------------------------------------------------------------------------------------

    def _sources(self) -> Iterator[Source | Failure | Replay]:
        """The inputs of this partition not done yet, a finished split's records in place of its source;
        ``RunError`` when the inputs hold no source at all (checked up front)."""
        stream = iter_sources(self.specs, self.recipe.inputs)
        head: list[Source | Failure] = []
        for item in stream:
            head.append(item)
            if isinstance(item, Source):
                break
        else:
            reasons = (
                "; ".join(f"{f.uri}: {f.reason}" for f in head if isinstance(f, Failure)) or "nothing given"
            )
            if not self.counts.resumed_clips:
                raise RunError(f"no inputs found ({reasons}); pass video files, folders, globs or lists")
        for item in itertools.chain(head, stream):
            if self.partition is not None and partition_of(item.uri, self.partition[1]) != self.partition[0]:
                continue
            if not self.ledger.mark(item.uri):
                continue  # done in a committed part, or named twice
            replay = self.ledger.split_of(item.uri) if isinstance(item, Source) else None
            yield item if replay is None else replay
        self.counts.sources_done = True

    # --- the loop ---------------------------------------------------------------------------------------

    def _start_pools(self) -> None:
        for step in STEPS:
            config = getattr(self.recipe.pools, step)
            build = functools.partial(build_stages, step, self.recipe)
            retries = self.recipe.runner.max_retries
            self.pools[step] = Pool(step, config, build, one_to_one=step != "probe", max_retries=retries)

    def _loop(self, sources: Iterator[Source | Failure | Replay], failures: ShardWriter) -> None:
        assert self.writers is not None
        pools = [self.pools[s] for s in STEPS]
        bound = self.recipe.runner.max_queued
        feeding = True
        while True:
            while (
                feeding
                and len(pools[0].queue) + pools[0].in_flight_items() < bound
                and len(pools[1].queue) < bound
            ):
                item = next(sources, None)
                if item is None:
                    feeding = False
                elif isinstance(item, Failure):
                    self._record(failures, item)
                elif isinstance(item, list):
                    self.counts.sources += 1
                    self.counts.replayed += 1
                    self._fan_out(failures, item)
                else:
                    self.counts.sources += 1
                    pools[0].queue.append(WorkItem(item.uri, item, item))
            for pool, downstream in zip(pools, [*pools[1:], None], strict=True):
                room = None if downstream is None else bound - len(downstream.queue)
                if pool is pools[0] and room is not None and room <= 0:
                    continue  # a video fans out into an unknown number of clips: wait for room
                pool.dispatch(None if pool is pools[0] else room)
            refs = [r for p in pools for r in (*p.batches, *p.ready_refs())]
            if not refs and not feeding and not any(p.queue for p in pools):
                self.writers.flush()  # the run ran dry: commit the writers' open shards
            refs += self.writers.refs()
            if not refs:
                if feeding:
                    continue
                break
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                self._collect(ref, failures)
            free = ray.available_resources()
            for pool in pools:
                pool.autoscale(free)
            if self.on_progress is not None:
                self.on_progress(self.counts, self.pools)

    def _collect(self, ref: Any, failures: ShardWriter) -> None:
        for step, pool in self.pools.items():
            if ref in pool.batches:
                self._route(step, pool.finish(ref), failures)
                return
            if ref in pool.ready_refs():
                try:
                    pool.mark_ready(ref)
                except RayError as exc:
                    raise RunError(f"the {step} workers could not start: {_first_line(exc)}") from exc
                return
        assert self.writers is not None
        committed, shards, redo = self.writers.finish(ref)
        for key in committed:
            self._fingerprints.pop(key, None)
        self.counts.samples += len(committed)
        self.counts.shards += shards
        self.counts.writer_deaths = self.writers.deaths
        retries = self.recipe.runner.max_retries
        for item in redo:  # a writer died before committing them: made again from their clip
            if item.attempts > retries:
                reason = f"its shard writer died {retries + 1} times"
                self._record(failures, Failure.of(item.origin, "encode", reason))
            else:
                self.pools["decode"].queue.appendleft(
                    WorkItem(item.key, item.origin, item.origin, item.attempts)
                )

    def _route(self, step: str, done: Done, failures: ShardWriter) -> None:
        if step == "probe":  # fan-out: clips and failures of whole videos
            video_level = sum(isinstance(r, Failure) and r.clip_id is None for r in done.results)
            self.counts.ok["probe"] += len(done.items) - video_level
            by_source: dict[str, Replay] = {item.key: [] for item in done.items}
            for result in done.results:
                by_source.setdefault(result.uri, []).append(result)
            for source, records in by_source.items():
                self.splits.add(source, records)
                self._fan_out(failures, records)
            return
        following = STEPS.index(step) + 1
        outputs: list[tuple[WorkItem, Any]] = []
        for item, status, ref in zip(done.items, done.results, done.output_refs, strict=True):
            if isinstance(status, Failure):
                self._record(failures, status)
            elif isinstance(status, Fingerprint) and (duplicate := self._duplicate(item, status)):
                self._record(failures, duplicate)
            else:
                outputs.append((item, ref))
        if step == "encode":
            assert self.writers is not None
            self.writers.submit([i for i, _ in outputs], [ref for _, ref in outputs])
        else:
            self.pools[STEPS[following]].queue.extend(WorkItem(i.key, i.origin, ref) for i, ref in outputs)
        self.counts.ok[step] += len(outputs)

    def _fan_out(self, failures: ShardWriter, records: Replay) -> None:
        """A video's split (fresh from the probe pool, or replayed from the ledger): clips to decode."""
        self.counts.videos += 1
        for record in records:
            if isinstance(record, Failure):
                self._record(failures, record, check=True)
            elif self.ledger.mark(record.clip_id):
                self.counts.clips_found += 1
                self.pools["decode"].queue.append(WorkItem(record.clip_id, record, record))

    def _duplicate(self, item: WorkItem, fingerprint: Fingerprint) -> Failure | None:
        """The ``dropped`` row of a clip that repeats one already past the index; else None (the clip goes on,
        and its row, ok or failed, will carry its fingerprint so that a resume knows it)."""
        found = self.duplicates.check(item.key, fingerprint) if self.recipe.dedup.enabled else None
        if found is None:
            if self.recipe.dedup.enabled:
                self.duplicates.add(item.key, fingerprint)
            self._fingerprints[item.key] = fingerprint
            return None
        assert isinstance(item.origin, Clip)
        return Failure.of(item.origin, "dedup", found[1], kind="dropped", scores=fingerprint.scores)

    def _record(self, failures: ShardWriter, failure: Failure, check: bool = False) -> None:
        """Write a failure row; with ``check``, not when its clip is already done (a span split dropped in an
        earlier attempt)."""
        key = failure.clip_id
        if check and key is not None and not self.ledger.mark(key):
            return  # without check: a clip failing downstream was marked when its video fanned out
        status = "dropped" if failure.kind == "dropped" else "failed"
        self.counts.failed[(failure.stage, status)] += 1
        row = failure_row(failure)
        fingerprint = self._fingerprints.pop(key, None) if key is not None else None
        if fingerprint is not None:  # failed after the duplicate index kept it: a resume must know it
            row.update(fingerprint.scores, frames_digest=fingerprint.digest, phash=list(fingerprint.phash))
        failures.record_failure(row)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors[-1] if errors else lines[0] if lines else type(exc).__name__).strip()


def init_ray(address: str | None, num_cpus: float | None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), or start a local instance sized to this machine."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        ray.init(address=address, **options)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance: no token file needed
    cpus = num_cpus or os.cpu_count() or 1
    ray.init(num_cpus=cpus, **options)  # type: ignore[arg-type]  # fractional CPUs work


def check_fits(recipe: RecipeConfig) -> None:
    """ConfigError when the pools' minimum sizes do not fit the cluster: nothing would ever run."""
    total = ray.cluster_resources()
    for resource, key in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        need = sum(getattr(p, key) * p.min_workers for p in (getattr(recipe.pools, s) for s in STEPS))
        if resource == "CPU":
            need += recipe.output.num_cpus * recipe.output.writers
        have = total.get(resource, 0.0)
        if need > have + 1e-9:
            raise ConfigError(
                f"the pools need {need:g} {resource}s at their minimum sizes but the Ray cluster has "
                f"{have:g}; lower pools.<step>.{key} or min_workers with --set, or use a bigger cluster "
                "(--address)"
            )
