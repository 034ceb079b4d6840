"""A small fake OpenAI-compatible chat-completions server on 127.0.0.1, for tests of the openai engine.

It stands in for an external service (a vLLM deployment), never for our own code. It records every request
and answers each attempt as the test's ``plan`` says: a status code, a delay, and optionally the content and
finish reason. Requests are told apart by the text of their last user message part.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MODEL = "tiny-vlm"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    delay_s: float = 0.0
    content: str | None = None  # None: a JSON document {"summary": <request key>}
    finish_reason: str = "stop"


Plan = Callable[[str, int], Reply]  # (request key, 1-based attempt) -> what to answer


@dataclass
class ServerState:
    """What a test told the server and what it saw; fresh per test (stale handlers keep their own)."""

    plan: Plan = lambda key, attempt: Reply()
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0


class FakeServer:
    def __init__(self) -> None:
        self.state = ServerState()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._complete)

    async def _complete(self, request: Request) -> JSONResponse:
        state = self.state
        body = await request.json()
        key = body["messages"][-1]["content"][-1]["text"]
        state.bodies.append(body)
        state.headers.append(dict(request.headers))
        state.attempts[key] += 1
        reply = state.plan(key, state.attempts[key])
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            await _sleep_unless_disconnected(request, reply.delay_s)
        finally:
            state.in_flight -= 1
        if reply.status != 200:
            message = f"fake failure {reply.status} for {key}"
            error = {"message": message, "type": "fake", "code": reply.status}
            return JSONResponse({"error": error}, status_code=reply.status)
        return JSONResponse(_completion(key, reply))


async def _sleep_unless_disconnected(request: Request, delay_s: float) -> None:
    """Stall like a slow server, but stop once the client has given up (so shutdown need not wait)."""
    deadline = time.monotonic() + delay_s
    while (left := deadline - time.monotonic()) > 0 and not await request.is_disconnected():
        await asyncio.sleep(min(left, 0.05))


def _completion(key: str, reply: Reply) -> dict[str, Any]:
    content = reply.content if reply.content is not None else json.dumps({"summary": key})
    message = {"role": "assistant", "content": content}
    return {
        "id": f"cmpl-{key}",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }


@contextmanager
def serve() -> Iterator[tuple[FakeServer, str]]:
    """Run a fake server in a background thread; yield it and its base URL (``http://127.0.0.1:P/v1``)."""
    fake = FakeServer()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        fake.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1, access_log=False
    )
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not runner.started:
        assert time.monotonic() < deadline and thread.is_alive(), "fake server did not start"
        time.sleep(0.01)
    try:
        yield fake, f"http://127.0.0.1:{port}/v1"
    finally:
        runner.should_exit = True
        thread.join(timeout=5)
        sock.close()
