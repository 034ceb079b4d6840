"""Actor pools: one per pipeline step, each worker a Ray actor holding a set-up stage.

A ``Pool`` owns a queue of work items, a set of ``StageWorker`` actors (between ``min_workers`` and
``max_workers``, grown while its queue is backed up and shrunk when workers sit idle), and the batches in
flight. Each worker takes up to ``max_in_flight`` batches at once, so the next batch is already waiting when
one finishes. Only the runner and this module import ``ray``; stages run unchanged in a plain process.

A batch's results come back as one status list (a ``Failure``, or for an output its small ``Fingerprint``
when it has one, else ``None``) plus, for 1:1 steps, one object per output, so heavy payloads (decoded
frames) go from worker to worker through Ray's object store and never through the driver.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from pydantic import Field, model_validator
from ray.exceptions import OutOfMemoryError, RayActorError

from dataengine.config import Config
from dataengine.records import Clip, DecodedClip, Failure, Fingerprint, Source, StageName
from dataengine.stages.base import Stage

log = logging.getLogger(__name__)

# Errors that mean the worker process is gone (killed, OOM, crashed engine): the batch is retried elsewhere.
WORKER_DIED = (RayActorError, OutOfMemoryError)


class PoolConfig(Config):
    """Resources and sizing of one step's actor pool."""

    num_cpus: float = Field(1.0, ge=0, description="Ray CPUs per worker")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs per worker; fractions share a GPU")
    memory_gb: float | None = Field(None, gt=0, description="Ray memory reservation per worker")
    min_workers: int = Field(1, ge=1)
    max_workers: int = Field(1, ge=1)
    batch_size: int = Field(4, ge=1, description="items per call; the caption engine wants big batches")
    max_in_flight: int = Field(2, ge=1, description="batches queued on one worker at once")
    idle_s: float = Field(30.0, gt=0, description="a worker idle this long above min_workers is released")

    @model_validator(mode="after")
    def _sizes(self) -> PoolConfig:
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers {self.max_workers} < min_workers {self.min_workers}")
        return self

    def actor_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_gb is not None:
            options["memory"] = int(self.memory_gb * 2**30)
        return options


class StageWorker:
    """The body of one actor: builds its stages once, then processes batches.

    An exception in ``process_batch`` is caught here, on purpose: the batch is redone item by item and the
    items that still raise become ``Failure`` records naming the exception, so one bad input never stops a
    run. The traceback goes to this worker's log.
    """

    def __init__(
        self, step: StageName, build: Callable[[], Sequence[Stage[Any, Any]]], one_to_one: bool
    ) -> None:
        self.step, self.one_to_one = step, one_to_one
        self.stages = list(build())
        for stage in self.stages:
            stage.setup()

    def ready(self) -> int:
        return os.getpid()

    def process(self, *items: Any) -> Any:
        start = time.perf_counter()
        results = self._process(list(items))
        busy = time.perf_counter() - start
        if not self.one_to_one:
            return busy, results
        return ((busy, [_status(r) for r in results]), *results)

    def _process(self, items: list[Any]) -> list[Any]:
        try:
            return self._chain(items)
        except Exception:  # noqa: BLE001  # the fault boundary (class docstring): find the items that raise
            log.warning("%s: a batch of %d raised; retrying item by item", self.step, len(items))
        results: list[Any] = []
        for item in items:
            try:
                results.extend(self._chain([item]))
            except Exception as exc:  # noqa: BLE001  # recorded as the item's failure; the run goes on
                log.error("%s failed on %s:\n%s", self.step, _describe(item), traceback.format_exc())
                results.append(Failure.of(_origin(item), self.step, f"{type(exc).__name__}: {exc}"))
        return results

    def _chain(self, items: list[Any]) -> list[Any]:
        done: list[Any] = []
        for stage in self.stages:
            todo = [i for i in items if not isinstance(i, Failure)]
            done += [i for i in items if isinstance(i, Failure)]
            items = stage.process_batch(todo) if todo else []
        return done + items


def _status(result: Any) -> Failure | Fingerprint | None:
    """What the driver sees of one result: its failure, or the fingerprint the duplicate index needs."""
    if isinstance(result, Failure):
        return result
    if isinstance(result, DecodedClip) and result.curation is not None:
        return result.curation.fingerprint
    return None


def _origin(item: Any) -> Source | Clip:
    """The record a failure row is made from: the item itself, or the clip it carries."""
    if isinstance(item, Source | Clip):
        return item
    clip = getattr(item, "clip", None)
    if isinstance(clip, Clip):
        return clip
    raise TypeError(f"cannot record a failure for a {type(item).__name__}")


def _describe(item: Any) -> str:
    origin = _origin(item)
    return (
        f"{origin.uri} [{origin.start_s:.2f}, {origin.end_s:.2f}]" if isinstance(origin, Clip) else origin.uri
    )


@dataclass
class WorkItem:
    """One item on its way through a pool: its id for the ledger, what failure rows are made from, the
    payload (a record, or a reference to one in the object store) and how often a worker died on it."""

    key: str
    origin: Source | Clip
    payload: Any
    attempts: int = 0


@dataclass
class Done:
    """A finished batch. 1:1 steps: ``results[i]`` is the ``Failure`` of ``items[i]``, or its output's
    ``Fingerprint`` or None (the output itself is ``output_refs[i]``). Fan-out steps: ``results`` are the
    outputs and failures of all items."""

    items: list[WorkItem]
    results: list[Any]
    output_refs: list[Any]


@dataclass
class _Batch:
    items: list[WorkItem]
    worker: Any
    status_ref: Any
    output_refs: list[Any]
    started: float


@dataclass
class _Worker:
    actor: Any
    ready_ref: Any
    ready: bool = False
    ready_at: float | None = None
    in_flight: int = 0
    idle_since: float = field(default_factory=time.monotonic)


class Pool:
    """One step's queue, workers and in-flight batches. The runner drives it; it never blocks."""

    def __init__(
        self,
        step: StageName,
        config: PoolConfig,
        build: Callable[[], Sequence[Stage[Any, Any]]],
        one_to_one: bool,
        max_retries: int,
    ) -> None:
        self.step, self.config, self.one_to_one, self.max_retries = step, config, one_to_one, max_retries
        self._build = build
        self._remote = ray.remote(StageWorker).options(**config.actor_options())
        self.queue: deque[WorkItem] = deque()
        self.workers: list[_Worker] = []
        self.batches: dict[Any, _Batch] = {}  # status ref -> batch
        self.busy_s = 0.0  # worker time spent inside process_batch (reported by the workers)
        self.deaths = 0
        self.peak_workers = 0
        self._retired_s = 0.0  # ready time of workers that are gone
        for _ in range(config.min_workers):
            self._add_worker()

    # --- workers ----------------------------------------------------------------------------------------

    def _add_worker(self) -> None:
        actor = self._remote.remote(self.step, self._build, self.one_to_one)
        self.workers.append(_Worker(actor, actor.ready.remote()))  # type: ignore[attr-defined]
        self.peak_workers = max(self.peak_workers, len(self.workers))

    def ready_refs(self) -> list[Any]:
        return [w.ready_ref for w in self.workers if not w.ready]

    def mark_ready(self, ref: Any) -> None:
        """A worker finished setting up (or failed to: ``ray.get`` raises the setup error to the runner)."""
        worker = next(w for w in self.workers if w.ready_ref == ref)
        ray.get(ref)
        worker.ready, worker.ready_at = True, time.monotonic()

    def autoscale(self, cluster_free: dict[str, float]) -> None:
        """Grow while a full batch waits and every ready worker is saturated; shrink idle surplus workers."""
        saturated = all(w.in_flight >= self.config.max_in_flight for w in self.workers if w.ready)
        starting = any(not w.ready for w in self.workers)
        if (
            len(self.queue) >= self.config.batch_size
            and saturated
            and not starting
            and len(self.workers) < self.config.max_workers
            and self._fits(cluster_free)
        ):
            self._add_worker()
            return
        now = time.monotonic()
        for worker in list(self.workers):
            idle = worker.ready and worker.in_flight == 0 and now - worker.idle_since > self.config.idle_s
            if idle and len(self.workers) > self.config.min_workers and not self.queue:
                self._retire(worker)
                ray.kill(worker.actor)

    def _fits(self, free: dict[str, float]) -> bool:
        need = {"CPU": self.config.num_cpus, "GPU": self.config.num_gpus}
        return all(free.get(k, 0.0) >= v for k, v in need.items() if v > 0)

    # --- batches ----------------------------------------------------------------------------------------

    def dispatch(self, room: int | None) -> None:
        """Send queued items to ready workers with spare capacity; ``room`` caps the items sent (downstream
        backpressure), ``None`` for no cap."""
        for worker in sorted(self.workers, key=lambda w: w.in_flight):
            while worker.ready and worker.in_flight < self.config.max_in_flight and self.queue:
                size = min(self.config.batch_size, len(self.queue))
                if size < self.config.batch_size and worker.in_flight > 0:
                    break  # a busy worker waits for a full batch; an idle one takes what there is
                if room is not None and size > room:
                    return
                items = [self.queue.popleft() for _ in range(size)]
                self._submit(worker, items)
                room = None if room is None else room - size

    def _submit(self, worker: _Worker, items: list[WorkItem]) -> None:
        call = worker.actor.process
        if self.one_to_one:
            call = call.options(num_returns=len(items) + 1)
        refs = call.remote(*(item.payload for item in items))
        status_ref, outputs = (refs[0], list(refs[1:])) if self.one_to_one else (refs, [])
        self.batches[status_ref] = _Batch(items, worker, status_ref, outputs, time.monotonic())
        worker.in_flight += 1

    def in_flight_items(self) -> int:
        return sum(len(b.items) for b in self.batches.values())

    def finish(self, status_ref: Any) -> Done:
        """Collect a finished batch. When its worker died, the worker is replaced, the items go back to the
        front of the queue with one more attempt counted, and those over ``max_retries`` come back as
        failures instead."""
        batch = self.batches.pop(status_ref)
        batch.worker.in_flight -= 1
        batch.worker.idle_since = time.monotonic()
        try:
            busy, results = ray.get(status_ref)
        except WORKER_DIED as exc:
            self._replace(batch.worker, exc)
            for item in batch.items:
                item.attempts += 1
            retry = [i for i in batch.items if i.attempts <= self.max_retries]
            given_up = [i for i in batch.items if i.attempts > self.max_retries]
            self.queue.extendleft(reversed(retry))
            reason = f"its worker died {self.max_retries + 1} times ({type(exc).__name__})"
            failures = [Failure.of(i.origin, self.step, reason) for i in given_up]
            return Done(given_up, failures, [None] * len(given_up))
        self.busy_s += busy
        return Done(batch.items, results, batch.output_refs)

    def _replace(self, worker: _Worker, exc: BaseException) -> None:
        if worker in self.workers:
            self.deaths += 1
            log.warning("%s worker died (%s); starting a replacement", self.step, type(exc).__name__)
            self._retire(worker)
            if len(self.workers) < self.config.min_workers:
                self._add_worker()

    def _retire(self, worker: _Worker) -> None:
        self.workers.remove(worker)
        if worker.ready_at is not None:
            self._retired_s += time.monotonic() - worker.ready_at

    def ready_s(self) -> float:
        """Worker-seconds since each worker finished setting up: the denominator of the busy fraction."""
        now = time.monotonic()
        return self._retired_s + sum(now - w.ready_at for w in self.workers if w.ready_at is not None)

    def busy_fraction(self) -> float:
        ready = self.ready_s()
        return self.busy_s / ready if ready > 0 else 0.0

    def shutdown(self) -> None:
        for worker in list(self.workers):
            self._retire(worker)
            ray.kill(worker.actor)
