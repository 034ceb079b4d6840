"""/v1/captions under load, against a real uvicorn whose caption engine is a fake OpenAI-compatible server
that stalls on demand (it stands in for a vLLM deployment): a full queue is 429 + Retry-After, a slow
caption 504, and a client that gives up takes its clip out of the queue."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dataengine.world.generate import synthesize
from tests.dataengine.caption.examples import GOOD
from tests.fake_openai import FakeServer, Reply, ServerState, serve
from tests.services.test_api import AUTH, Server, start_server, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeServer, str]]:
    with serve() as running:
        yield running


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("caption_root")
    (path,) = synthesize(root / "videos", 1, seed=3, max_shots=1)
    return Path(path)


def serving(video: Path, fake: tuple[FakeServer, str], delay_s: float, **env: str) -> Server:
    fake[0].state = ServerState(
        plan=lambda key, attempt: Reply(delay_s=delay_s, content=GOOD.model_dump_json())
    )
    settings = {"CAPTION_BASE_URL": fake[1], "CAPTION_CONCURRENCY": "1", "CAPTION_MAX_BATCH": "1", **env}
    server = start_server(video.parent.parent, **{f"DATAENGINE_{k}": v for k, v in settings.items()})
    try:
        with server.client() as client:
            # the fake serves no /models, so /readyz says it does not answer: wait for the engine's setup only
            started = lambda: client.get("/readyz").json()["checks"]["caption_engine"] != "starting"  # noqa: E731
            wait_for(started, 60, "the caption engine never got set up")
    except BaseException:
        server.stop()
        raise
    return server


def caption(server: Server, video: Path, timeout_s: float = 60) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=timeout_s) as client:
        return client.post("/v1/captions", json={"uri": str(video)}, headers=AUTH)


def metric(server: Server, name: str) -> float:
    with server.client() as client:
        found = re.search(rf"^{re.escape(name)} (\S+)$", client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_full_queue_answers_429_with_retry_after(video: Path, fake: tuple[FakeServer, str]) -> None:
    server = serving(video, fake, delay_s=2.0, CAPTION_QUEUE="1")
    try:
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: caption(server, video), range(4)))
    finally:
        server.stop()
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}, statuses
    for refused in (r for r in responses if r.status_code == 429):
        assert int(refused.headers["Retry-After"]) >= 1 and "retry in" in refused.json()["detail"]


def test_a_caption_over_the_timeout_is_504(video: Path, fake: tuple[FakeServer, str]) -> None:
    server = serving(video, fake, delay_s=3.0, CAPTION_TIMEOUT_S="1")
    try:
        slow = caption(server, video)
    finally:
        server.stop()
    assert slow.status_code == 504 and "CAPTION_TIMEOUT_S" in slow.json()["detail"]


def test_a_client_that_leaves_takes_its_clip_out_of_the_queue(
    video: Path, fake: tuple[FakeServer, str]
) -> None:
    server = serving(video, fake, delay_s=1.5)
    try:
        engine_clips = metric(server, "dataengine_caption_batch_size_sum")
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(caption, server, video)  # holds the engine for 1.5 s per attempt
            time.sleep(0.5)
            with pytest.raises(httpx.ReadTimeout):
                caption(server, video, timeout_s=0.5)  # waits behind it, then gives up
            assert first.result().status_code == 200
        dropped = 'dataengine_caption_dropped_total{reason="cancelled"}'
        wait_for(lambda: metric(server, dropped) >= 1, 10, "the clip of the client that left was not dropped")
        assert metric(server, "dataengine_caption_batch_size_sum") == engine_clips + 1  # it never went out
    finally:
        server.stop()
