"""Concurrent caption requests gathered into batches for one engine.

Each worker owns one set-up caption stage. It takes the oldest waiting clip, gathers what else is waiting (up
to ``max_batch``, waiting at most ``gather_s`` after the first for more) and captions them all in one
``process_batch`` call: the same windows, gate and retries as a batch run, and one engine call that vLLM
batches continuously. The queue is bounded; a full one is refused at once with the time it needs to drain.
A request cancelled before its batch starts (timeout, client gone) is dropped from it.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from dataengine.records import CaptionedClip, DecodedClip, Failure
from dataengine.stages.caption import CaptionStage

log = logging.getLogger(__name__)
Result = CaptionedClip | Failure
BATCH = Histogram(
    "dataengine_caption_batch_size", "clips per engine call of /v1/captions",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)  # fmt: skip
WAITING = Gauge("dataengine_caption_queue", "/v1/captions clips waiting for the engine")
DROPPED = Counter("dataengine_caption_dropped_total", "/v1/captions clips not captioned", ["reason"])


class QueueFullError(Exception):
    """The caption queue is full; ``retry_after_s`` is when it should have room again."""

    def __init__(self, retry_after_s: int, size: int) -> None:
        super().__init__(f"{size} captions are waiting for the engine; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class _Item:
    clip: DecodedClip
    future: Future[Result] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self, stages: Sequence[CaptionStage], max_batch: int, gather_s: float, max_queue: int
    ) -> None:
        self.stages, self.max_batch, self.gather_s = list(stages), max_batch, gather_s
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clip_s = 1.0  # seconds of engine time per clip (moving average), for Retry-After

    def start(self) -> None:
        for i, stage in enumerate(self.stages):
            name = f"caption-batch-{i}"
            thread = threading.Thread(target=self._work, args=(stage,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        while True:  # what is still waiting gets an answer, not a hang
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            item.future.cancel()

    def submit(self, clip: DecodedClip) -> Future[Result]:
        """A future of ``clip``'s caption; cancel it to drop the clip while it waits.

        Raises:
            QueueFullError: ``max_queue`` clips are waiting already.
        """
        item = _Item(clip)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            DROPPED.labels("queue full").inc()
            raise QueueFullError(self.retry_after_s(), self._queue.maxsize) from None
        WAITING.inc()
        return item.future

    def retry_after_s(self) -> int:
        """Seconds until the clips waiting now should be captioned (at least 1)."""
        waiting = self._queue.qsize() + len(self.stages) * self.max_batch
        return max(1, math.ceil(waiting * self._clip_s / len(self.stages)))

    def _work(self, stage: CaptionStage) -> None:
        while not self._stop.is_set():
            batch = self._gather()
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            DROPPED.labels("cancelled").inc(len(batch) - len(live))
            if not live:
                continue
            BATCH.observe(len(live))
            started = time.perf_counter()
            try:
                results = stage.process_batch([item.clip for item in live])
            except Exception as exc:  # an engine error answers every request of the batch
                log.exception("a caption batch of %d failed", len(live))
                for item in live:
                    item.future.set_exception(exc)
                continue
            per_clip = (time.perf_counter() - started) / len(live)
            self._clip_s = 0.8 * self._clip_s + 0.2 * per_clip
            for item, result in zip(live, results, strict=True):
                item.future.set_result(result)

    def _gather(self) -> list[_Item]:
        """The oldest waiting item and what else arrives within ``gather_s``, at most ``max_batch``."""
        try:
            batch = [self._queue.get(timeout=0.5)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.gather_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        WAITING.dec(len(batch))
        return batch
