"""The ``openai`` caption engine: any OpenAI-compatible chat-completions server, in production vLLM's.

Launch the server with ``python -m vllm.entrypoints.openai.api_server --model DIR --port 8000`` and point
``base_url`` at ``http://HOST:8000/v1``. The API key is read from the environment variable named by
``api_key_env`` (``EMPTY`` when unset, which vLLM accepts unless it was started with ``--api-key``).

Requests run concurrently on a private event loop, at most ``concurrency`` in flight. Our retry policy
replaces the SDK's: HTTP 408/429/5xx, timeouts and connection errors are retried with capped exponential
backoff and jitter; any other status (400, 401, 422, ...) and anything still failing after ``max_retries``
becomes that request's ``EngineOutput.error``. Each attempt is bounded by ``timeout_s``, so one call to
``generate`` is bounded too. Videos travel as an H.264 mp4 data URL (``video_url``, which vLLM decodes) or,
with ``video_encoding="frames"``, as one JPEG ``image_url`` per frame; a single frame is always one JPEG
``image_url`` (an image request: the server must allow one image per prompt).

Legend: ``frames_THWC`` is uint8 RGB, T frames of H rows x W columns x 3 channels; ``frame_HWC`` is one.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import subprocess
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, cast

import numpy as np
import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from PIL import Image
from pydantic import Field
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from dataengine.caption.engines.base import CaptionEngine, EngineOutput, EngineRequest
from dataengine.config import Config
from dataengine.media import require_ffmpeg, stderr_tail
from dataengine.records import Frames

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 30.0  # the exponential part of one wait stops growing here (jitter comes on top)
_ENCODE_TIMEOUT_S = 300.0  # ffmpeg encodes a few hundred small frames in well under a second
_JPEG_QUALITY = 90
_RETRY_STATUSES = frozenset({408, 429})  # plus every 5xx


class OpenAIEngineConfig(Config):
    kind: Literal["openai"] = "openai"
    model: str = Field(description="the served model name (vLLM: --served-model-name, else the --model path)")
    base_url: str = Field(description="the API root, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field(
        "DATAENGINE_CAPTION_API_KEY", description="environment variable holding the key (never the key)"
    )
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(120.0, gt=0, description="bound on one attempt of one request")
    max_retries: int = Field(4, ge=0, description="extra attempts after a retryable failure")
    backoff_s: float = Field(0.5, ge=0, description="first wait before a retry; doubles, with jitter, capped")
    video_encoding: Literal["mp4", "frames"] = "mp4"
    logprobs: bool = Field(
        True,
        description="ask for the sampled tokens' log-probs (the gate's confidence); off for servers "
        "that refuse the parameter",
    )


class OpenAIEngine(CaptionEngine):
    """Caption requests sent to an OpenAI-compatible ``/chat/completions`` endpoint, concurrently."""

    name: ClassVar[str] = "openai"
    config: OpenAIEngineConfig

    def __init__(self, config: OpenAIEngineConfig) -> None:
        super().__init__(config)
        self._client: openai.AsyncOpenAI | None = None
        self._runner: asyncio.Runner | None = None

    def setup(self) -> None:
        """Open the client and the event loop every later ``generate`` call runs on.

        Raises:
            RuntimeError: ``video_encoding="mp4"`` and ffmpeg is not on PATH.
        """
        if self.config.video_encoding == "mp4":
            require_ffmpeg()
        self._client = openai.AsyncOpenAI(
            base_url=self.config.base_url,
            api_key=os.environ.get(self.config.api_key_env) or "EMPTY",
            max_retries=0,  # the retry policy is ours (see _retryable)
            timeout=self.config.timeout_s,
        )
        # One loop for the engine's lifetime: the client's pooled connections belong to the loop that opened
        # them, so a fresh loop per call (plain asyncio.run) would strand them.
        self._runner = asyncio.Runner()

    def generate(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        """Send every request, at most ``concurrency`` at a time, and return one output per request, in order.

        A request that fails (non-retryable status, or retries exhausted) returns an output with ``text=""``
        and ``error`` set; the other requests are unaffected.

        Raises:
            RuntimeError: ``setup()`` was not called, an event loop is already running in this thread, or
                ffmpeg failed to encode a clip's frames.
        """
        if self._runner is None:
            raise RuntimeError("OpenAIEngine.generate() called before setup()")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop running: the synchronous caller this method is made for
        else:
            raise RuntimeError(
                "OpenAIEngine.generate() is synchronous and cannot run inside a running event loop; "
                "call it from a worker thread (e.g. asyncio.to_thread) instead"
            )
        if not requests:
            return []
        return self._runner.run(self._generate_all(requests))

    def teardown(self) -> None:
        """Close the client's connections and the event loop."""
        if self._runner is not None:
            if self._client is not None:
                self._runner.run(self._client.close())
            self._runner.close()
        self._client = None
        self._runner = None

    async def _generate_all(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        limit = asyncio.Semaphore(self.config.concurrency)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._generate_one(r, limit)) for r in requests]
        except BaseExceptionGroup as failed:  # only our own bugs or a broken ffmpeg get here
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _generate_one(self, request: EngineRequest, limit: asyncio.Semaphore) -> EngineOutput:
        async with limit:  # held through backoff too: a server that says 429 gets fewer requests, not more
            messages = await asyncio.to_thread(openai_messages, request, self.config.video_encoding)
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.config.max_retries + 1),
                wait=wait_exponential(multiplier=self.config.backoff_s, max=_MAX_BACKOFF_S)
                + wait_random(0, self.config.backoff_s),
                retry=retry_if_exception(_retryable),
                before_sleep=before_sleep_log(log, logging.DEBUG),
                reraise=True,
            )
            try:
                response: ChatCompletion = await retrying(self._attempt, request, messages)
            except (openai.APIError, TimeoutError) as exc:
                attempts = retrying.statistics.get("attempt_number", 1)
                reason = _describe(exc, self.config.timeout_s)
                return EngineOutput(text="", finish_reason=None, error=f"{reason} (attempts: {attempts})")
        return _output(response)

    async def _attempt(self, request: EngineRequest, messages: list[dict[str, Any]]) -> ChatCompletion:
        assert self._client is not None
        sampling = request.sampling
        schema_format: Any = openai.omit
        if request.schema is not None:
            schema_format = {
                "type": "json_schema",
                "json_schema": {"name": "caption", "schema": request.schema, "strict": True},
            }
        extra_body = None
        if sampling.repetition_penalty != 1.0:  # a vLLM extension: only sent when it changes something
            extra_body = {"repetition_penalty": sampling.repetition_penalty}
        # The SDK's own timeout bounds each socket operation; this bounds the whole attempt.
        async with asyncio.timeout(self.config.timeout_s):
            return await self._client.chat.completions.create(
                model=self.config.model,
                messages=cast("list[ChatCompletionMessageParam]", messages),  # video_url is a vLLM extension
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=sampling.seed,
                response_format=schema_format,
                logprobs=self.config.logprobs,
                extra_body=extra_body,
            )


def openai_messages(request: EngineRequest, video_encoding: Literal["mp4", "frames"]) -> list[dict[str, Any]]:
    """System and user messages in the OpenAI chat format; the video or image comes before the text."""
    user: list[dict[str, Any]] = []
    if request.frames is not None:
        if video_encoding == "mp4" and request.modality == "video":
            url = _data_url("video/mp4", encode_mp4(request.frames))
            user.append({"type": "video_url", "video_url": {"url": url}})
        else:
            for frame_HWC in request.frames.frames_THWC:
                url = _data_url("image/jpeg", _jpeg(frame_HWC))
                user.append({"type": "image_url", "image_url": {"url": url}})
    user.append({"type": "text", "text": request.text})
    return [{"role": "system", "content": request.prompt.system}, {"role": "user", "content": user}]


def encode_mp4(frames: Frames) -> bytes:
    """``frames`` as an H.264 (yuv420p) fragmented mp4 at ``frames.fps``; odd sizes are padded by one pixel.

    Raises:
        RuntimeError: ffmpeg failed or ran longer than a few minutes.
    """
    t, h, w, _ = frames.shape
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-protocol_whitelist", "pipe",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{frames.fps:.6g}", "-i", "-",
        "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",  # yuv420p needs even sizes; padding keeps every pixel
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
        # A pipe cannot seek back to write the index: fragments carry it instead. vLLM's loader reads these.
        "-movflags", "frag_keyframe+empty_moov", "-f", "mp4", "-",
    ]  # fmt: skip
    raw = np.ascontiguousarray(frames.frames_THWC).tobytes()
    try:
        done = subprocess.run(cmd, input=raw, capture_output=True, timeout=_ENCODE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"ffmpeg ran over {_ENCODE_TIMEOUT_S:g} s encoding {t} frames of {w}x{h}") from exc
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"ffmpeg could not encode {t} frames of {w}x{h}: {stderr_tail(done.stderr)}")
    return done.stdout


def _jpeg(frame_HWC: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame_HWC).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _retryable(exc: BaseException) -> bool:
    """Timeouts, lost connections, 408, 429 and 5xx may pass; other statuses say the request is wrong."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _RETRY_STATUSES or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError | TimeoutError)  # APITimeoutError is a connection error


def _describe(exc: openai.APIError | TimeoutError, timeout_s: float) -> str:
    """One line saying why a request failed: the HTTP status and the server's message, or the timeout."""
    if isinstance(exc, openai.APIStatusError):
        message = exc.message.removeprefix(f"Error code: {exc.status_code} - ")  # the SDK's prefix
        return f"HTTP {exc.status_code}: {_short(message)}"
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"connection error: {_short(str(cause) if cause else exc.message)}"
    return f"{type(exc).__name__}: {_short(exc.message)}"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _output(response: ChatCompletion) -> EngineOutput:
    if not response.choices:
        return EngineOutput(text="", finish_reason=None, error="the server returned no choices")
    choice = response.choices[0]
    usage = response.usage
    tokens = choice.logprobs.content if choice.logprobs is not None else None
    return EngineOutput(
        text=choice.message.content or "",
        finish_reason=choice.finish_reason,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        output_tokens=usage.completion_tokens if usage else 0,
        logprobs=tuple(float(t.logprob) for t in tokens or ()),
    )
