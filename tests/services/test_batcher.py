"""The /v1/captions batcher: concurrent clips gathered into one engine call (the session's real vLLM engine),
and, against a fake OpenAI-compatible server that stalls on demand, a bounded queue, cancellation and the
order in which batches form."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager

import pytest
from prometheus_client import REGISTRY

from dataengine.caption.engines import CaptionEngine, OpenAIEngineConfig
from dataengine.records import CaptionedClip, DecodedClip, Failure
from dataengine.stages.caption import CaptionConfig, CaptionStage
from pipelines.gate_eval import SCORE_ONLY
from pipelines.recipes import demo
from services.api.captions.batcher import Batcher, QueueFullError
from tests.dataengine.caption.examples import GOOD
from tests.fake_openai import MODEL, FakeServer, Reply, ServerState, serve

RANDOM = demo().caption.model_copy(update={"verify": None, "quality": SCORE_ONLY})


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeServer, str]]:
    with serve() as running:
        yield running


def batches() -> tuple[float, float]:
    """Engine calls of the batcher so far, and the clips they carried (its Prometheus histogram)."""
    calls = REGISTRY.get_sample_value("dataengine_caption_batch_size_count") or 0.0
    return calls, REGISTRY.get_sample_value("dataengine_caption_batch_size_sum") or 0.0


def http_stage(fake: tuple[FakeServer, str], delay_s: float) -> CaptionStage:
    fake[0].state = ServerState(
        plan=lambda key, attempt: Reply(delay_s=delay_s, content=GOOD.model_dump_json())
    )
    engine = OpenAIEngineConfig(model=MODEL, base_url=fake[1], backoff_s=0.01, timeout_s=30, max_retries=0)
    stage = CaptionStage(CaptionConfig(engine=engine))
    stage.setup()
    return stage


@contextmanager
def serving(
    fake: tuple[FakeServer, str], delay_s: float, max_batch: int, max_queue: int
) -> Iterator[Batcher]:
    """A started batcher over one HTTP stage against the stalling fake; stopped and torn down after."""
    stage = http_stage(fake, delay_s)
    batcher = Batcher([stage], max_batch=max_batch, gather_s=0.0, max_queue=max_queue)
    batcher.start()
    try:
        yield batcher
    finally:
        batcher.stop()
        stage.teardown()


def engine_busy(batcher: Batcher, clip: DecodedClip) -> Future[CaptionedClip | Failure]:
    """Submit ``clip`` and return once its batch is running (the engine is busy with it)."""
    future = batcher.submit(clip)
    while not future.running():
        time.sleep(0.01)
    return future


def test_concurrent_clips_share_one_engine_call(
    vllm_engine: CaptionEngine, caption_clips: list[DecodedClip]
) -> None:
    """Six requests arriving together while the engine is busy are captioned in batches, not one by one."""
    stage = CaptionStage(RANDOM, engine=vllm_engine)
    calls_before, clips_before = batches()
    batcher = Batcher([stage], max_batch=8, gather_s=0.05, max_queue=16)
    batcher.start()
    try:
        futures = [batcher.submit(clip) for clip in caption_clips * 2]
        results = [future.result(timeout=600) for future in futures]
    finally:
        batcher.stop()
    # the session's engine is a random tiny VLM: its text is not judged here, only that each clip is answered
    assert [r.clip_id for r in results] == [c.clip_id for c in caption_clips * 2]
    assert all(isinstance(r, CaptionedClip) or r.stage == "caption" for r in results)
    calls, clips = batches()
    assert clips - clips_before == 6 and calls - calls_before < 6, calls - calls_before


def test_a_full_queue_is_refused_with_a_retry_time(
    fake: tuple[FakeServer, str], caption_clips: list[DecodedClip]
) -> None:
    with serving(fake, 1.0, max_batch=1, max_queue=2) as batcher:
        first = engine_busy(batcher, caption_clips[0])  # the worker holds it: the queue is empty again
        queued = [batcher.submit(clip) for clip in caption_clips[:2]]
        with pytest.raises(QueueFullError) as full:
            batcher.submit(caption_clips[2])
        assert full.value.retry_after_s >= 1 and "retry in" in str(full.value)
        assert all(isinstance(f.result(timeout=30), CaptionedClip) for f in [first, *queued])


def test_a_cancelled_clip_never_reaches_the_engine(
    fake: tuple[FakeServer, str], caption_clips: list[DecodedClip]
) -> None:
    with serving(fake, 0.5, max_batch=1, max_queue=8) as batcher:
        engine_busy(batcher, caption_clips[0])
        gone = batcher.submit(caption_clips[1])
        assert gone.cancel()  # the client went away while it waited
        last = batcher.submit(caption_clips[2])
        assert isinstance(last.result(timeout=30), CaptionedClip)
        with pytest.raises(CancelledError):
            gone.result()
        assert len(fake[0].state.bodies) == 2  # the first and the last clip; the cancelled one never went


def test_clips_waiting_while_a_batch_runs_form_the_next_batch(
    fake: tuple[FakeServer, str], caption_clips: list[DecodedClip]
) -> None:
    calls_before, clips_before = batches()
    with serving(fake, 0.3, max_batch=4, max_queue=16) as batcher:
        first = engine_busy(batcher, caption_clips[0])
        rest = [batcher.submit(clip) for clip in caption_clips * 2]  # arrive while the first is captioned
        for future in [first, *rest]:
            future.result(timeout=30)
    calls, clips = batches()
    assert (calls - calls_before, clips - clips_before) == (3, 7)  # batches of 1, 4 and 2
    assert fake[0].state.max_in_flight >= 4  # the HTTP engine sends a batch's requests at once


def test_stop_answers_what_still_waits(
    fake: tuple[FakeServer, str], caption_clips: list[DecodedClip]
) -> None:
    stage = http_stage(fake, delay_s=0.5)
    batcher = Batcher([stage], max_batch=1, gather_s=0.0, max_queue=8)
    batcher.start()
    first = engine_busy(batcher, caption_clips[0])
    waiting = batcher.submit(caption_clips[1])
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    stopper.join(timeout=30)
    stage.teardown()
    assert isinstance(first.result(timeout=1), CaptionedClip)  # the batch under way finishes
    assert waiting.cancelled()
