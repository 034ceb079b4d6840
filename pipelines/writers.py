"""Shard writers on the cluster: each writer actor owns its shard parts, so no sample byte passes the driver.

The encode workers' outputs stay in Ray's object store; the driver hands a writer the *references* of a
batch (``ShardSink.write(*refs)``: Ray resolves them on the writer's node) and hears back only which keys
were appended and which are committed. A writer keeps one open shard per bucket (the latent shape: image or
video, frames, height, width), so every shard holds samples of one shape and a trainer batch drawn from a
shard is homogeneous.

Exactly once: a key counts only once the manifest part of its shard is committed (``dataengine.shards``).
Until then the driver keeps the key as *pending* on that writer. When a writer dies, the driver reads the
manifest parts committed under the writer's names (a shard may have been committed just before the death,
unacknowledged), counts those keys as done, and sends the rest back to be made again; the replacement writer
removes what the dead one left (its partial files and unfinished uploads) before it writes, and continues the
dead one's numbering.

    sinks = Writers(store, recipe.shards, recipe.output, tag="")
    sinks.submit(items_with_sample_refs)      # returns at once
    for ref in ray.wait(sinks.refs()): committed, redo = sinks.finish(ref)
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray
from pydantic import Field
from ray.exceptions import RayError

from dataengine.config import Config
from dataengine.shards import ShardConfig, ShardWriter, cleanup_partials, iter_manifest_parts
from dataengine.stages.sample import Sample
from dataengine.storage import Store
from pipelines.errors import RunError
from pipelines.pools import WORKER_DIED, WorkItem

log = logging.getLogger(__name__)


class OutputConfig(Config):
    """Where and how samples are written (the location itself is ``--out``)."""

    writers: int = Field(2, ge=1, description="writer actors; each owns its shard parts")
    num_cpus: float = Field(0.1, ge=0, description="Ray CPUs per writer (tar writing and uploads)")
    buckets: bool = Field(True, description="one shard stream per latent shape, so shards are homogeneous")
    max_shard_age_s: float = Field(
        600.0,
        gt=0,
        description="a shard open this long is committed at the writer's next batch, even if not full: "
        "bounds the work a killed writer loses on a slow run",
    )
    storage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='fsspec options per protocol for --out, e.g. {"s3": {"endpoint_url": ...}}; '
        "credentials are best left to the environment (AWS_ACCESS_KEY_ID, ...)",
    )


def bucket_of(row: dict[str, Any], buckets: bool = True) -> str:
    """A sample row's shard bucket: ``video-TxHxW`` or ``image-1xHxW`` from its latent shape (C, T, H, W)."""
    shape = row.get("latent_shape")
    if not buckets or not shape:
        return "all"
    *_, t, h, w = (int(s) for s in shape)
    return f"{'image' if t == 1 else 'video'}-{t}x{h}x{w}"


class ShardSink:
    """The body of one writer actor: a ``ShardWriter`` per bucket under the names ``{prefix}-{part}-...``."""

    def __init__(
        self, store: Store, config: ShardConfig, part: str, output: OutputConfig, replacing: bool = False
    ) -> None:
        self.store, self.config, self.part, self.output = store, config, part, output
        if replacing:  # what the dead writer of this part left (the runner cleaned up before the first)
            cleanup_partials(store, f"{config.prefix}-{part}-")
        pa.Table.from_pylist([{"warm": 1}])  # its first call imports pandas (~0.3 s): now, not at a commit
        self._writers: dict[str, ShardWriter] = {}
        self._open: dict[str, list[str]] = {}  # bucket -> keys in its open shard
        self._opened: dict[str, float] = {}  # bucket -> when its open shard got its first sample

    def ready(self) -> str:
        return self.part

    def write(self, *samples: Sample) -> tuple[list[str], int]:
        """Append ``samples``; returns the keys and the number of shards this call committed (full ones, and
        those open longer than ``output.max_shard_age_s``)."""
        committed: list[str] = []
        shards = 0
        for sample in samples:
            bucket = bucket_of(sample.row, self.output.buckets)
            writer = self._writers.get(bucket)
            if writer is None:
                writer = self._writers[bucket] = ShardWriter(self.store, self.config, f"{self.part}-{bucket}")
                self._open[bucket] = []
            before = len(writer.written)
            writer.write(sample.key, sample.members, {**sample.row, "bucket": bucket})
            if len(writer.written) > before:  # the previous shard was committed to make room
                committed += self._open[bucket]
                shards += 1
                self._open[bucket] = []
            if not self._open[bucket]:
                self._opened[bucket] = time.monotonic()
            self._open[bucket].append(sample.key)
        old = time.monotonic() - self.output.max_shard_age_s
        full = [b for b, keys in self._open.items() if len(keys) >= self.config.max_samples]
        due = [b for b, keys in self._open.items() if keys and (b in full or self._opened[b] < old)]
        keys, n = self.flush(due)  # a full shard is committed now, not when the next sample comes
        return committed + keys, shards + n

    def flush(self, buckets: Sequence[str] | None = None) -> tuple[list[str], int]:
        """Commit the open shards (of ``buckets``, default all); returns their keys and how many shards."""
        committed: list[str] = []
        shards = 0
        for bucket in self._writers if buckets is None else buckets:
            if self._open[bucket]:
                committed += self._open[bucket]
                shards += 1
                self._open[bucket] = []
            self._writers[bucket].close()
        return committed, shards


@dataclass
class _Slot:
    index: int
    part: str
    actor: Any = None
    ready_ref: Any = None
    generation: int = 0
    pending: dict[str, WorkItem] = field(default_factory=dict)  # appended or on their way, not committed
    calls: int = 0


@dataclass
class _Call:
    slot: _Slot
    generation: int
    flush: bool  # a flush call (else a batch of samples)


class Writers:
    """The driver's side of the writer actors: routes references, tracks what is pending and committed."""

    def __init__(self, store: Store, shards: ShardConfig, config: OutputConfig, tag: str) -> None:
        self.store, self.shards, self.config, self.tag = store, shards, config, tag
        options = {"num_cpus": config.num_cpus, "max_concurrency": 1}
        self._remote = ray.remote(ShardSink).options(**options)
        self.slots = [_Slot(i, f"{tag}w{i:02d}") for i in range(config.writers)]
        self._calls: dict[Any, _Call] = {}
        self._turn = itertools.count()
        self.deaths = 0
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: _Slot) -> None:
        replacing = slot.generation > 0
        slot.actor = self._remote.remote(self.store, self.shards, slot.part, self.config, replacing)
        slot.ready_ref = slot.actor.ready.remote()
        slot.generation += 1

    # --- the runner's calls ---

    def refs(self) -> list[Any]:
        return [*self._calls, *(s.ready_ref for s in self.slots if s.ready_ref is not None)]

    def pending(self) -> int:
        return sum(len(s.pending) for s in self.slots)

    def submit(self, items: Sequence[WorkItem], sample_refs: Sequence[Any]) -> None:
        """Send one batch's sample references to the least busy writer."""
        if not items:
            return
        turn = next(self._turn) % len(self.slots)
        slot = min(self.slots, key=lambda s: (s.calls, (s.index - turn) % len(self.slots)))
        ref = slot.actor.write.remote(*sample_refs)
        self._calls[ref] = _Call(slot, slot.generation, flush=False)
        slot.calls += 1
        slot.pending.update((i.key, i) for i in items)

    def flush(self) -> None:
        """Ask the writers holding uncommitted samples to commit their open shards (the run ran dry)."""
        if any(c.flush for c in self._calls.values()):
            return  # a flush is on its way
        for slot in self.slots:
            if slot.pending:
                self._calls[slot.actor.flush.remote()] = _Call(slot, slot.generation, flush=True)
                slot.calls += 1

    def finish(self, ref: Any) -> tuple[list[str], int, list[WorkItem]]:
        """Handle a finished call (or a writer that finished starting): ``(committed keys, shards committed,
        items to make again)``."""
        slot = next((s for s in self.slots if s.ready_ref == ref), None)
        if slot is not None:
            try:
                ray.get(ref)
            except RayError as exc:
                raise RunError(f"the shard writers could not start on {self.store.url}: {exc}") from exc
            slot.ready_ref = None
            return [], 0, []
        call = self._calls.pop(ref)
        call.slot.calls -= 1
        if call.generation != call.slot.generation:
            return [], 0, []  # a call to a writer that died: its items were settled when the death was seen
        try:
            committed, shards = ray.get(ref)
        except WORKER_DIED as exc:
            return self._died(call.slot, exc)
        except RayError as exc:
            raise RunError(f"writing shards to {self.store.url} failed: {_cause(exc)}") from exc
        for key in committed:
            call.slot.pending.pop(key, None)
        return committed, shards, []

    def done(self) -> bool:
        """Nothing pending and no call in flight: every sample handed over is committed."""
        return not self._calls and self.pending() == 0

    def shutdown(self) -> None:
        for slot in self.slots:
            ray.kill(slot.actor)

    # --- a writer died ---

    def _died(self, slot: _Slot, exc: BaseException) -> tuple[list[str], int, list[WorkItem]]:
        """The pending keys its committed parts hold are done; the others are returned to be made again."""
        self.deaths += 1
        log.warning("writer %s died (%s); starting a replacement", slot.part, type(exc).__name__)
        self._start(slot)  # its cleanup runs before its first write; the committed parts stay
        stem = f"{self.shards.prefix}-{slot.part}-"
        committed: list[str] = []
        shards = 0
        for _, table in iter_manifest_parts(self.store, columns=["clip_id"], stem_prefix=stem):
            found = [k for k in table.column("clip_id").to_pylist() if k in slot.pending]
            committed += found
            shards += bool(found)
        for key in committed:
            slot.pending.pop(key)
        redo = list(slot.pending.values())
        slot.pending.clear()
        for item in redo:
            item.attempts += 1
        return committed, shards, redo


def _cause(exc: RayError) -> str:
    cause = getattr(exc, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[0]
