"""Caption engines behind one interface, chosen by the ``kind`` of their config.

vllm          in-process vllm.LLM (the main path for batches)
openai        any OpenAI-compatible chat-completions endpoint (e.g. a vLLM server deployment)
transformers  AutoModelForImageTextToText, for debugging and parity checks
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dataengine.caption.engines.base import CaptionEngine, EngineOutput, EngineRequest, SamplingConfig
from dataengine.caption.engines.hf_engine import TransformersEngine, TransformersEngineConfig
from dataengine.caption.engines.openai_engine import OpenAIEngine, OpenAIEngineConfig
from dataengine.caption.engines.vllm_engine import VLLMEngine, VLLMEngineConfig

EngineConfig = Annotated[
    VLLMEngineConfig | OpenAIEngineConfig | TransformersEngineConfig, Field(discriminator="kind")
]


def build_engine(config: EngineConfig) -> CaptionEngine:
    """The engine for ``config`` (constructed only: call ``setup()`` to load it)."""
    if isinstance(config, VLLMEngineConfig):
        return VLLMEngine(config)
    if isinstance(config, OpenAIEngineConfig):
        return OpenAIEngine(config)
    return TransformersEngine(config)


__all__ = [
    "CaptionEngine",
    "EngineConfig",
    "EngineOutput",
    "EngineRequest",
    "OpenAIEngineConfig",
    "SamplingConfig",
    "TransformersEngineConfig",
    "VLLMEngineConfig",
    "build_engine",
]
