"""Recipes: named functions that return a complete, validated configuration. A run is a recipe plus overrides.

    config = apply_overrides(get_recipe("demo"), ["caption.sampling.max_tokens=512", "split.mode=fixed"])

``demo`` is the embedded default: no GPU, no model hub (the captioner is the tiny VLM the project builds
itself, named ``builtin:tiny-qwen2_5_vl``). ``gpu-qwen25vl-7b`` names a real checkpoint and GPU settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field, ValidationError

from dataengine.caption.engines import SamplingConfig, VLLMEngineConfig
from dataengine.config import ConfigError, StageConfig
from dataengine.stages import DecodeConfig, ProbeConfig, SplitConfig, ViewConfig
from dataengine.stages.caption import CaptionConfig


class RecipeConfig(StageConfig):
    """Everything a run needs, one small config per stage."""

    name: str
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    caption: CaptionConfig


def demo() -> RecipeConfig:
    """The embedded default: CPU only, tiny models built locally, small frames."""
    return RecipeConfig(
        name="demo",
        split=SplitConfig(mode="scenes", window_s=2.0, min_clip_s=1.0, max_clip_s=4.0),
        decode=DecodeConfig(
            views={"caption": ViewConfig(fps=2, max_frames=8, resize="short_side", size=112)}
        ),
        caption=CaptionConfig(
            engine=VLLMEngineConfig(
                model="builtin:tiny-qwen2_5_vl",
                dtype="float32",
                max_model_len=4096,
                # CPU: a 1 GiB KV cache; the engine core in this process, threads not pinned to one core.
                env={
                    "VLLM_CPU_KVCACHE_SPACE": "1",
                    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                    "HF_HUB_OFFLINE": "1",
                },
                extra={"enforce_eager": True},
            ),
            sampling=SamplingConfig(temperature=0.0, max_tokens=1024),
            window_frames=8,
        ),
    )


def gpu_qwen25vl_7b() -> RecipeConfig:
    """One GPU per caption worker: Qwen2.5-VL-7B-Instruct in bf16, 448-px frames at 2 fps, 32 per window."""
    return RecipeConfig(
        name="gpu-qwen25vl-7b",
        split=SplitConfig(mode="scenes", window_s=5.0, min_clip_s=1.0, max_clip_s=10.0),
        decode=DecodeConfig(
            views={"caption": ViewConfig(fps=2, max_frames=32, resize="short_side", size=448)}, threads=4
        ),
        caption=CaptionConfig(
            engine=VLLMEngineConfig(
                model="Qwen/Qwen2.5-VL-7B-Instruct",
                dtype="bfloat16",
                max_model_len=32768,
                gpu_memory_utilization=0.9,
            ),
            sampling=SamplingConfig(temperature=0.0, max_tokens=1024),
            window_frames=32,
        ),
    )


RECIPES: dict[str, Callable[[], RecipeConfig]] = {"demo": demo, "gpu-qwen25vl-7b": gpu_qwen25vl_7b}


def get_recipe(name: str) -> RecipeConfig:
    """The recipe called ``name``; ``ConfigError`` lists the names that exist."""
    try:
        return RECIPES[name]()
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}") from None


class OverrideError(ConfigError):
    """An override names a key that does not exist, or gives a value the key does not accept."""


def apply_overrides(config: RecipeConfig, overrides: Sequence[str]) -> RecipeConfig:
    """``config`` with ``key.path=value`` overrides applied (values parse as JSON, else as strings).

    Raises:
        OverrideError: malformed override, unknown key (the message lists the keys that exist there), or a
            value that fails validation.
    """
    data = config.model_dump(mode="json")
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise OverrideError(
                f"override {override!r} is not key=value (e.g. caption.sampling.max_tokens=512)"
            )
        _set(data, key.strip().split("."), _parse(raw))
    try:
        return RecipeConfig.model_validate(data)
    except ValidationError as exc:
        raise OverrideError(f"invalid override: {exc}") from exc


def _parse(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _set(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for depth, part in enumerate(path):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(path[:depth]) or "the recipe"
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a section)"
            raise OverrideError(f"unknown key {'.'.join(path)!r}: {where} has {known}")
        if depth == len(path) - 1:
            node[part] = value
        else:
            node = node[part]
