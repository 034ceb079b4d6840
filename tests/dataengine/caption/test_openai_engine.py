"""The ``openai`` engine against a small fake OpenAI-compatible server on 127.0.0.1.

The server (FastAPI under uvicorn in a background thread) records every request and answers each attempt as
the test's ``plan`` says: a status code and a delay. Requests are told apart by their user text (``req-7``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dataengine.caption.engines.base import EngineRequest, SamplingConfig
from dataengine.caption.engines.openai_engine import OpenAIEngine, OpenAIEngineConfig
from dataengine.caption.prompts import DENSE, DENSE_IMAGE, FUSE
from dataengine.caption.schema import json_schema
from dataengine.records import Frames
from tests.fake_openai import MODEL, FakeServer, Plan, Reply, ServerState, serve
from tests.net import free_port

MakeEngine = Callable[..., OpenAIEngine]  # keyword overrides of the test config -> an engine after setup()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeServer, str]]:
    with serve() as running:
        yield running


@pytest.fixture
def fake(server: tuple[FakeServer, str]) -> FakeServer:
    server[0].state = ServerState()
    return server[0]


@pytest.fixture
def make_engine(server: tuple[FakeServer, str]) -> Iterator[MakeEngine]:
    engines: list[OpenAIEngine] = []

    def make(**overrides: Any) -> OpenAIEngine:
        config = OpenAIEngineConfig(**{"model": MODEL, "base_url": server[1], "backoff_s": 0.01, **overrides})
        engine = OpenAIEngine(config)
        engine.setup()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.teardown()


def _frames(t: int = 9, h: int = 33, w: int = 47, fps: float = 8.0) -> Frames:
    rng = np.random.default_rng(0)
    frames_THWC = rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)
    return Frames(frames_THWC, fps, np.arange(t) / fps)


def _text_requests(n: int, **sampling: Any) -> list[EngineRequest]:
    config = SamplingConfig(**sampling)
    return [EngineRequest(FUSE, f"req-{i}", None, None, config) for i in range(n)]


def _index(key: str) -> int:
    return int(key.removeprefix("req-"))


# --- request format -------------------------------------------------------------------------------------


def test_video_request_format_mp4(fake: FakeServer, make_engine: MakeEngine, tmp_path: Path) -> None:
    engine = make_engine()
    schema = json_schema()
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, max_tokens=64, seed=3, repetition_penalty=1.05)
    request = EngineRequest(DENSE, "req-0", _frames(t=9, h=33, w=47, fps=8.0), schema, sampling)

    (output,) = engine.generate([request])

    assert output.error is None
    assert json.loads(output.text) == {"summary": "req-0"}
    assert (output.finish_reason, output.prompt_tokens, output.output_tokens) == ("stop", 11, 5)
    (body,) = fake.state.bodies
    assert body["model"] == MODEL
    assert body["messages"][0] == {"role": "system", "content": DENSE.system}
    assert body["messages"][1]["role"] == "user"
    video, text = body["messages"][1]["content"]
    assert text == {"type": "text", "text": "req-0"}
    assert video["type"] == "video_url"
    prefix = "data:video/mp4;base64,"
    assert video["video_url"]["url"].startswith(prefix)
    path = tmp_path / "sent.mp4"
    path.write_bytes(base64.b64decode(video["video_url"]["url"].removeprefix(prefix)))
    stream = _ffprobe_stream(path)
    assert (int(stream["nb_read_frames"]), stream["width"], stream["height"]) == (9, 48, 34)  # padded to even
    assert (stream["codec_name"], stream["r_frame_rate"]) == ("h264", "8/1")
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "caption", "schema": schema, "strict": True},
    }
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.7, 0.9, 64, 3)
    assert body["repetition_penalty"] == 1.05


def _ffprobe_stream(path: Path) -> dict[str, Any]:
    cmd = ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)]
    done = subprocess.run(cmd, capture_output=True, check=True, timeout=30)
    stream: dict[str, Any] = json.loads(done.stdout)["streams"][0]
    return stream


def test_video_request_format_frames(fake: FakeServer, make_engine: MakeEngine) -> None:
    engine = make_engine(video_encoding="frames")
    request = EngineRequest(DENSE, "req-0", _frames(t=5, h=33, w=47), None, SamplingConfig())

    (output,) = engine.generate([request])

    assert output.error is None
    (body,) = fake.state.bodies
    *images, text = body["messages"][1]["content"]
    assert text == {"type": "text", "text": "req-0"}
    assert len(images) == 5
    for part in images:
        assert part["type"] == "image_url"
        url = part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert (image.format, image.size) == ("JPEG", (47, 33))


@pytest.mark.parametrize("video_encoding", ["mp4", "frames"])
def test_a_single_frame_is_sent_as_one_image(
    fake: FakeServer, make_engine: MakeEngine, video_encoding: str
) -> None:
    engine = make_engine(video_encoding=video_encoding)
    request = EngineRequest(DENSE_IMAGE, "req-0", _frames(t=1, h=33, w=47), None, SamplingConfig())

    (output,) = engine.generate([request])

    assert output.error is None and request.modality == "image"
    (body,) = fake.state.bodies
    image, text = body["messages"][1]["content"]
    assert text == {"type": "text", "text": "req-0"} and image["type"] == "image_url"
    jpeg = base64.b64decode(image["image_url"]["url"].removeprefix("data:image/jpeg;base64,"))
    assert Image.open(io.BytesIO(jpeg)).size == (47, 33)


def test_text_request_defaults(
    fake: FakeServer, make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATAENGINE_CAPTION_API_KEY", raising=False)
    make_engine().generate(_text_requests(1))
    monkeypatch.setenv("DATAENGINE_CAPTION_API_KEY", "from-env")
    make_engine().generate(_text_requests(1))

    first, _ = fake.state.bodies
    assert first["messages"][1]["content"] == [{"type": "text", "text": "req-0"}]
    assert "response_format" not in first
    assert "repetition_penalty" not in first  # only sent when it is not 1.0
    assert [h["authorization"] for h in fake.state.headers] == ["Bearer EMPTY", "Bearer from-env"]


# --- concurrency and order ------------------------------------------------------------------------------


def test_outputs_in_input_order_when_answers_come_back_reversed(
    fake: FakeServer, make_engine: MakeEngine
) -> None:
    n = 12
    fake.state.plan = lambda key, attempt: Reply(delay_s=0.02 * (n - _index(key)))
    outputs = make_engine(concurrency=n).generate(_text_requests(n))
    assert [json.loads(o.text)["summary"] for o in outputs] == [f"req-{i}" for i in range(n)]


def test_concurrency_limit(fake: FakeServer, make_engine: MakeEngine) -> None:
    fake.state.plan = lambda key, attempt: Reply(delay_s=0.05)
    outputs = make_engine(concurrency=3).generate(_text_requests(15))
    assert all(o.error is None for o in outputs)
    assert fake.state.max_in_flight == 3


# --- retries and failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retryable_status_retried_then_succeeds(
    fake: FakeServer, make_engine: MakeEngine, status: int
) -> None:
    fake.state.plan = lambda key, attempt: Reply(status=status if attempt <= 2 else 200)
    outputs = make_engine(max_retries=4).generate(_text_requests(5))
    assert [o.error for o in outputs] == [None] * 5
    assert set(fake.state.attempts.values()) == {3}


def test_retries_exhausted_become_an_error(fake: FakeServer, make_engine: MakeEngine) -> None:
    fake.state.plan = lambda key, attempt: Reply(status=503)
    (output,) = make_engine(max_retries=2).generate(_text_requests(1))
    assert (output.text, output.finish_reason) == ("", None)
    assert output.error is not None and "HTTP 503" in output.error and "attempts: 3" in output.error
    assert fake.state.attempts["req-0"] == 3


@pytest.mark.parametrize("status", [400, 401, 422])
def test_client_errors_not_retried(fake: FakeServer, make_engine: MakeEngine, status: int) -> None:
    fake.state.plan = lambda key, attempt: Reply(status=status if key == "req-1" else 200)
    outputs = make_engine(max_retries=4).generate(_text_requests(3))
    assert [o.error is None for o in outputs] == [True, False, True]
    bad = outputs[1]
    assert (bad.text, bad.finish_reason) == ("", None)
    assert bad.error is not None and f"HTTP {status}" in bad.error and "fake failure" in bad.error
    assert fake.state.attempts["req-1"] == 1


def test_timeout_then_success(fake: FakeServer, make_engine: MakeEngine) -> None:
    fake.state.plan = lambda key, attempt: Reply(delay_s=2.0 if attempt == 1 else 0.0)
    (output,) = make_engine(timeout_s=0.3, max_retries=1).generate(_text_requests(1))
    assert output.error is None
    assert fake.state.attempts["req-0"] == 2


def test_connection_refused_is_an_error(make_engine: MakeEngine) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # a port nobody listens on
    (output,) = make_engine(base_url=url, max_retries=1).generate(_text_requests(1))
    assert output.error is not None and "connection error" in output.error and "attempts: 2" in output.error


@pytest.mark.timeout(60)  # a hang fails here instead of stalling the suite
def test_faults_every_request_ends_and_the_call_is_bounded(fake: FakeServer, make_engine: MakeEngine) -> None:
    def plan(key: str, attempt: int) -> Reply:
        draw = random.Random(f"e/{key}/{attempt}").random()  # seed "e": both kinds of final failure occur
        if draw < 0.3:
            return Reply(status=503)
        if draw < 0.5:
            return Reply(delay_s=3.0)  # far beyond timeout_s
        return Reply(delay_s=0.01)

    fake.state.plan = plan
    timeout_s, max_retries, concurrency, n = 0.5, 2, 8, 40
    engine = make_engine(
        timeout_s=timeout_s, max_retries=max_retries, concurrency=concurrency, backoff_s=0.05
    )

    start = time.monotonic()
    outputs = engine.generate(_text_requests(n))
    wall_s = time.monotonic() - start

    # Worst case: every request in a wave times out on every attempt, waves of `concurrency` back to back.
    per_request_s = (max_retries + 1) * timeout_s + max_retries * 0.3  # backoffs: 0.05, 0.1 + jitter
    assert wall_s < (n // concurrency) * per_request_s + 2.0
    expected = [_final_reply(plan, f"req-{i}", max_retries + 1) for i in range(n)]
    assert len(outputs) == n
    for i, (output, reply) in enumerate(zip(outputs, expected, strict=True)):
        assert (output.error is None) != (output.text == "")
        if reply.status == 503:
            assert output.error is not None and "HTTP 503" in output.error
        elif reply.delay_s > timeout_s:
            assert output.error is not None and "timed out after 0.5 s" in output.error
        else:
            assert json.loads(output.text) == {"summary": f"req-{i}"}
    outcomes = Counter(r.status if r.status != 200 else r.delay_s > timeout_s for r in expected)
    assert outcomes[503] > 0 and outcomes[True] > 0 and outcomes[False] > n // 2  # True: timed out


def _final_reply(plan: Plan, key: str, attempts: int) -> Reply:
    """The reply a request's last attempt gets: the first good one, else the one on the last attempt."""
    for attempt in range(1, attempts + 1):
        reply = plan(key, attempt)
        if reply.status == 200 and reply.delay_s < 0.5:
            return reply
    return reply


# --- lifecycle ------------------------------------------------------------------------------------------


def test_generate_twice_on_one_engine(fake: FakeServer, make_engine: MakeEngine) -> None:
    engine = make_engine()
    first = engine.generate(_text_requests(4))
    second = engine.generate(_text_requests(4))
    assert [o.text for o in first] == [o.text for o in second]
    assert all(o.error is None for o in first + second)
    assert engine.generate([]) == []


def test_generate_inside_a_running_loop_raises(make_engine: MakeEngine) -> None:
    engine = make_engine()

    async def call() -> None:
        engine.generate(_text_requests(1))

    with pytest.raises(RuntimeError, match="running event loop"):
        asyncio.run(call())


def test_generate_before_setup_raises() -> None:
    engine = OpenAIEngine(OpenAIEngineConfig(model=MODEL, base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(RuntimeError, match="before setup"):
        engine.generate(_text_requests(1))


def test_config_is_strict() -> None:
    with pytest.raises(ValueError, match="api_key"):
        OpenAIEngineConfig(model=MODEL, base_url="http://127.0.0.1:9/v1", api_key="sk-nope")  # type: ignore[call-arg]
