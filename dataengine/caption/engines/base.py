"""One interface for every captioning backend: requests in, raw outputs out, in order.

An engine knows how to talk to one kind of model server or library; it does not judge outputs (the quality
gate does) and it does not retry bad captions (the caption stage does). Transport problems that survive the
engine's own retries come back as ``EngineOutput.error`` for that request only.

Frames go to the model as a video, or, when there is exactly one, as an image (``EngineRequest.modality``):
Qwen-VL would only repeat a lone frame to fill its temporal patch of two, and a still is what it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from dataengine.caption.prompts import Prompt
from dataengine.config import Config
from dataengine.records import Frames


class SamplingConfig(Config):
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(768, ge=1, description="output tokens per request; hitting it = truncated")
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int = 0


@dataclass(frozen=True)
class EngineRequest:
    """One generation: a prompt with its user text rendered, the frames (video prompts), a schema."""

    prompt: Prompt
    text: str
    frames: Frames | None
    schema: dict[str, Any] | None
    sampling: SamplingConfig

    @property
    def modality(self) -> Literal["video", "image"] | None:
        """How the frames are sent: one frame is an image, more are a video; None for text-only requests."""
        if self.frames is None:
            return None
        return "image" if len(self.frames.frames_THWC) == 1 else "video"


@dataclass(frozen=True)
class EngineOutput:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    output_tokens: int = 0
    token_ids: tuple[int, ...] = ()
    error: str | None = None
    logprobs: tuple[float, ...] = ()  # the sampled tokens' log-probabilities; empty when not reported


class CaptionEngine(ABC):
    """Lifecycle as for stages: cheap constructor, ``setup()`` loads, ``generate()`` works, ``teardown()``."""

    name: ClassVar[str]

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    def model_id(self) -> str:
        model: str = self.config.model
        return model

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load the model or open the client; called once per worker."""

    @abstractmethod
    def generate(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        """Run ``requests`` (as one batch where the backend can); one output per request, in order."""

    def generate_until(
        self,
        requests: Sequence[EngineRequest],
        on_output: Callable[[int, EngineOutput], EngineRequest | None],
    ) -> None:
        """Generate ``requests``; hand each output to ``on_output(index, output)``, which returns a follow-up
        request for the same index (a retry) or None. Runs until no follow-up is pending.

        This default works in rounds of ``generate`` calls; engines that can add work to a running batch
        override it so that a retry starts as soon as its rejected output is known.
        """
        pending = dict(enumerate(requests))
        while pending:
            keys = list(pending)
            outputs = self.generate([pending[k] for k in keys])
            pending = {}
            for key, output in zip(keys, outputs, strict=True):
                follow_up = on_output(key, output)
                if follow_up is not None:
                    pending[key] = follow_up

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Free the model or close the client."""


def even_frames(frames: Frames) -> np.ndarray:
    """frames_THWC with an even T (the last frame repeated when needed): Qwen-VL packs frames in pairs."""
    frames_THWC = frames.frames_THWC
    if len(frames_THWC) % 2:
        frames_THWC = np.concatenate([frames_THWC, frames_THWC[-1:]])
    return frames_THWC


def video_metadata(frames_THWC: np.ndarray, fps: float) -> dict[str, Any]:
    """The metadata Qwen-VL processors need with raw frames, so they neither resample nor guess timing."""
    n = len(frames_THWC)
    return {
        "fps": fps,
        "duration": n / fps,
        "total_num_frames": n,
        "frames_indices": list(range(n)),
        "video_backend": "opencv",
        "do_sample_frames": False,
    }


def chat_messages(request: EngineRequest) -> list[dict[str, Any]]:
    """System + user messages in the processors' chat format; the video or image is a placeholder for the
    template, first in the user message."""
    user: list[dict[str, Any]] = [{"type": "text", "text": request.text}]
    if request.modality is not None:
        user.insert(0, {"type": request.modality})
    return [
        {"role": "system", "content": [{"type": "text", "text": request.prompt.system}]},
        {"role": "user", "content": user},
    ]
