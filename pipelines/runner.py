"""``dataengine run``: inputs -> shards on Ray, one actor pool per step, resumable exactly once.

    dataengine run data/videos --out out/run --recipe demo          # local Ray sized to this machine
    dataengine run s3://bucket/videos/ --out s3out --recipe gpu-qwen25vl-7b-wan --address auto

The driver streams sources in (never the whole list at once), moves work items between the pools
(probe+split -> decode+filter -> caption -> encode), pauses a step while the queue after it is full
(backpressure), and writes every sample and failure through one ``ShardWriter``.

Curation happens before the expensive step: the decode workers score each clip and drop what the filters
refuse (``dataengine.curate.filters``); the driver then asks its duplicate index (exact digests and
perceptual hashes, ``dataengine.curate.dedup``) whether a clip repeats one already kept, and drops it
before captioning if so. The index is seeded on resume from the committed rows of kept clips, so what was
committed is decided the same way again.

Resume: the manifest is the ledger. A clip is done once a committed manifest part holds its row (a sample
or a failure); a video is done once a video-level failure row names it. On start the runner removes what a
killed writer left (``cleanup_partials``), reads the ledger, and skips what is done, so a rerun of the same
command after ``kill -9`` at any moment ends with the clip set of an uninterrupted run: nothing twice,
nothing lost. Videos are probed and split again on resume (cheap next to decode and caption), which is how
their remaining clips are found.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import ray
from ray.exceptions import RayError

from dataengine.config import ConfigError
from dataengine.curate.dedup import DuplicateIndex
from dataengine.inputs import iter_sources
from dataengine.records import Clip, Failure, Fingerprint, Source, StageName
from dataengine.samples import failure_row
from dataengine.shards import ShardWriter, cleanup_partials, read_manifest
from dataengine.stages import DecodeStage, ProbeStage, SplitStage, Stage
from dataengine.stages.caption import CaptionStage
from dataengine.stages.filter import FilterStage, LearnedStage
from dataengine.stages.sample import Sample, SampleConfig, SampleStage
from pipelines.errors import RunError
from pipelines.pools import Done, Pool, WorkItem
from pipelines.recipes import RecipeConfig

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
class Ledger:
    """What committed manifest parts say is done."""

    clips: set[str] = field(default_factory=set)
    sources: set[str] = field(default_factory=set)  # inputs and videos with a video-level row
    # Clips that passed the duplicate index (rows with a fingerprint): clip ids, digests, perceptual hashes.
    passed: tuple[list[str], list[str], list[list[int]]] = ([], [], [])

    @classmethod
    def read(cls, out_dir: Path) -> Ledger:
        table = read_manifest(out_dir)
        clip_ids, sources = table.column("clip_id").to_pylist(), table.column("source").to_pylist()
        ledger = cls()
        for clip_id, source in zip(clip_ids, sources, strict=True):
            if clip_id is not None:
                ledger.clips.add(clip_id)
            elif source is not None:
                ledger.sources.add(source)
        passed = table.filter(pc.is_valid(table.column("phash")))
        columns = ("clip_id", "frames_digest", "phash")
        ledger.passed = tuple(passed.column(c).to_pylist() for c in columns)
        return ledger


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
    samples: int = 0
    shards: int = 0

    @property
    def failures(self) -> int:
        return sum(self.failed.values())


class Runner:
    """Drives the pools of one run. ``run()`` returns the counts; progress goes to ``on_progress``."""

    def __init__(
        self,
        recipe: RecipeConfig,
        specs: Sequence[str],
        out_dir: Path,
        on_progress: Callable[[Counts, dict[str, Pool]], None] | None = None,
    ) -> None:
        self.recipe, self.specs, self.out_dir = recipe, list(specs), Path(out_dir)
        self.on_progress = on_progress
        self.counts = Counts()
        self.pools: dict[str, Pool] = {}
        self._seen: set[str] = set()  # clip ids and sources handled in this run (inputs may repeat)
        self._fingerprints: dict[str, Fingerprint] = {}  # clips past the duplicate index, until their row

    def run(self) -> Counts:
        try:
            cleanup_partials(self.out_dir)
            ledger = Ledger.read(self.out_dir)
            writer = ShardWriter(self.out_dir, self.recipe.shards)
        except OSError as exc:
            raise RunError(f"cannot write the run to {self.out_dir}: {exc}; choose a writable --out") from exc
        self.counts.resumed_clips = len(ledger.clips)
        self.duplicates = DuplicateIndex.from_rows(self.recipe.dedup, *ledger.passed)
        sources = self._sources(ledger)
        self._start_pools()
        try:
            with writer:
                self._loop(sources, ledger, writer)
            self.counts.shards = len(writer.written)
        finally:
            for pool in self.pools.values():
                pool.shutdown()
        return self.counts

    # --- sources ----------------------------------------------------------------------------------------

    def _sources(self, ledger: Ledger) -> Iterator[Source | Failure]:
        """The inputs not done yet; ``RunError`` when the inputs hold no source at all (checked up front)."""
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
            if not ledger.sources:
                raise RunError(f"no inputs found ({reasons}); pass video files, folders, globs or lists")
        for item in itertools.chain(head, stream):
            if item.uri in ledger.sources or item.uri in self._seen:
                continue
            self._seen.add(item.uri)
            yield item
        self.counts.sources_done = True

    # --- the loop ---------------------------------------------------------------------------------------

    def _start_pools(self) -> None:
        for step in STEPS:
            config = getattr(self.recipe.pools, step)
            build = functools.partial(build_stages, step, self.recipe)
            retries = self.recipe.runner.max_retries
            self.pools[step] = Pool(step, config, build, one_to_one=step != "probe", max_retries=retries)

    def _loop(self, sources: Iterator[Source | Failure], ledger: Ledger, writer: ShardWriter) -> None:
        pools = [self.pools[s] for s in STEPS]
        bound = self.recipe.runner.max_queued
        feeding = True
        while True:
            while feeding and len(pools[0].queue) + pools[0].in_flight_items() < bound:
                item = next(sources, None)
                if item is None:
                    feeding = False
                elif isinstance(item, Failure):
                    self._record(writer, item)
                else:
                    self.counts.sources += 1
                    pools[0].queue.append(WorkItem(item.uri, item, item))
            for pool, downstream in zip(pools, [*pools[1:], None], strict=True):
                room = None if downstream is None else bound - len(downstream.queue)
                if pool is pools[0] and room is not None and room <= 0:
                    continue  # a video fans out into an unknown number of clips: wait for room
                pool.dispatch(None if pool is pools[0] else room)
            refs = [r for p in pools for r in (*p.batches, *p.ready_refs())]
            if not refs:
                if feeding:
                    continue
                break
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                self._collect(ref, writer, ledger)
            free = ray.available_resources()
            for pool in pools:
                pool.autoscale(free)
            self.counts.shards = len(writer.written)
            if self.on_progress is not None:
                self.on_progress(self.counts, self.pools)

    def _collect(self, ref: Any, writer: ShardWriter, ledger: Ledger) -> None:
        for step, pool in self.pools.items():
            if ref in pool.batches:
                self._route(step, pool.finish(ref), writer, ledger)
                return
            if ref in pool.ready_refs():
                try:
                    pool.mark_ready(ref)
                except RayError as exc:
                    raise RunError(f"the {step} workers could not start: {_first_line(exc)}") from exc
                return

    def _route(self, step: str, done: Done, writer: ShardWriter, ledger: Ledger) -> None:
        if step == "probe":  # fan-out: clips and failures of whole videos
            video_level = sum(isinstance(r, Failure) and r.clip_id is None for r in done.results)
            self.counts.ok["probe"] += len(done.items) - video_level
            self.counts.videos += len(done.items)
            for result in done.results:
                if isinstance(result, Failure):
                    self._record(writer, result, ledger)
                else:
                    self._found(result, ledger)
            return
        following = STEPS.index(step) + 1
        outputs: list[tuple[WorkItem, Any]] = []
        for item, status, ref in zip(done.items, done.results, done.output_refs, strict=True):
            if isinstance(status, Failure):
                self._record(writer, status)
            elif isinstance(status, Fingerprint) and (duplicate := self._duplicate(item, status)):
                self._record(writer, duplicate)
            else:
                outputs.append((item, ref))
        if step == "encode":
            for sample in ray.get([ref for _, ref in outputs]):
                assert isinstance(sample, Sample)
                self._fingerprints.pop(sample.key, None)
                writer.write(sample.key, sample.members, sample.row)
                self.counts.samples += 1
        else:
            self.pools[STEPS[following]].queue.extend(WorkItem(i.key, i.origin, ref) for i, ref in outputs)
        self.counts.ok[step] += len(outputs)

    def _duplicate(self, item: WorkItem, fingerprint: Fingerprint) -> Failure | None:
        """The ``dropped`` row of a clip that repeats one already past the index; else None (the clip goes on,
        and its row, ok or failed, will carry its fingerprint so that a resume knows it)."""
        found = self.duplicates.check(item.key, fingerprint) if self.recipe.dedup.enabled else None
        if found is None:
            self.duplicates.add(item.key, fingerprint)
            self._fingerprints[item.key] = fingerprint
            return None
        assert isinstance(item.origin, Clip)
        return Failure.of(item.origin, "dedup", found[1], kind="dropped", scores=fingerprint.scores)

    def _found(self, clip: Clip, ledger: Ledger) -> None:
        if clip.clip_id in ledger.clips or clip.clip_id in self._seen:
            return
        self._seen.add(clip.clip_id)
        self.counts.clips_found += 1
        self.pools["decode"].queue.append(WorkItem(clip.clip_id, clip, clip))

    def _record(self, writer: ShardWriter, failure: Failure, ledger: Ledger | None = None) -> None:
        key = failure.clip_id
        if key is not None and ledger is not None and (key in ledger.clips or key in self._seen):
            return  # a span dropped by split in an earlier attempt
        if key is not None:
            self._seen.add(key)
        status = "dropped" if failure.kind == "dropped" else "failed"
        self.counts.failed[(failure.stage, status)] += 1
        row = failure_row(failure)
        fingerprint = self._fingerprints.pop(key, None) if key is not None else None
        if fingerprint is not None:  # failed after the duplicate index kept it: a resume must know it
            row.update(fingerprint.scores, frames_digest=fingerprint.digest, phash=list(fingerprint.phash))
        writer.record_failure(row)


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
        have = total.get(resource, 0.0)
        if need > have + 1e-9:
            raise ConfigError(
                f"the pools need {need:g} {resource}s at their minimum sizes but the Ray cluster has "
                f"{have:g}; lower pools.<step>.{key} or min_workers with --set, or use a bigger cluster "
                "(--address)"
            )
