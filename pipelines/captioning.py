"""Caption one video, start to end, in this process: what ``dataengine caption`` and the REST API call.

The whole video is one clip; a video with more frames than the caption window is captioned window by
window and fused. The result is one JSON-ready document, or a failure with its stage and reason.
"""

from __future__ import annotations

import time
from typing import Any

from dataengine.caption.engines import OpenAIEngineConfig, TransformersEngineConfig, VLLMEngineConfig
from dataengine.config import ConfigError
from dataengine.records import CaptionedClip, Clip, Failure, Source, Video
from dataengine.stages import DecodeStage, ProbeStage
from dataengine.stages.caption import CaptionStage
from pipelines.recipes import RecipeConfig

ENGINE_KINDS = ("vllm", "openai", "transformers")


def with_engine(recipe: RecipeConfig, kind: str, base_url: str | None = None) -> RecipeConfig:
    """``recipe`` with its caption engine switched to ``kind``, keeping the model.

    Raises:
        ConfigError: unknown kind, or ``openai`` without a ``base_url``.
    """
    current = recipe.caption.engine
    if kind == current.kind:
        return recipe
    engine: VLLMEngineConfig | OpenAIEngineConfig | TransformersEngineConfig
    if kind == "vllm":
        engine = VLLMEngineConfig(model=current.model)
    elif kind == "transformers":
        engine = TransformersEngineConfig(model=current.model)
    elif kind == "openai":
        if not base_url:
            raise ConfigError("--engine openai needs the server's URL: --base-url http://HOST:PORT/v1")
        engine = OpenAIEngineConfig(model=current.model, base_url=base_url)
    else:
        raise ConfigError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}")
    caption = recipe.caption.model_copy(update={"engine": engine})
    return recipe.model_copy(update={"caption": caption})


def caption_video(
    uri: str, recipe: RecipeConfig, stage: CaptionStage | None = None, max_windows: int = 8
) -> dict[str, Any]:
    """Probe, decode and caption ``uri`` as one clip; return the caption document (or ``error``).

    ``stage`` is a set-up caption stage to reuse (a server keeps one); without it one is built, set up and
    torn down here. At most ``max_windows`` caption windows are decoded: longer videos are sampled sparser.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    source = Source.from_uri(uri)
    video = ProbeStage(recipe.probe).probe(source)
    timings["probe_s"] = time.perf_counter() - started
    if isinstance(video, Failure):
        return _error(video, timings, started)
    clip = Clip.of(video, index=0, start_s=0.0, end_s=round(video.probe.duration_s, 3))
    t0 = time.perf_counter()
    decoded = DecodeStage(_decode_config(recipe, max_windows)).decode(clip)
    timings["decode_s"] = time.perf_counter() - t0
    if isinstance(decoded, Failure):
        return _error(decoded, timings, started)
    own = stage is None
    stage = stage or CaptionStage(recipe.caption)
    t0 = time.perf_counter()
    if own:
        stage.setup()
        timings["engine_setup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    try:
        (result,) = stage.process_batch([decoded])
    finally:
        if own:
            stage.teardown()
    timings["caption_s"] = time.perf_counter() - t0
    if isinstance(result, Failure):
        return _error(result, timings, started)
    return _document(video, result, timings, started)


def _decode_config(recipe: RecipeConfig, max_windows: int) -> Any:
    view_name = recipe.caption.view
    view = recipe.decode.views[view_name]
    wide = view.model_copy(update={"max_frames": recipe.caption.window_frames * max_windows})
    return recipe.decode.model_copy(update={"views": {view_name: wide}})


def _document(
    video: Video, result: CaptionedClip, timings: dict[str, float], started: float
) -> dict[str, Any]:
    timings["total_s"] = time.perf_counter() - started
    clip = result.clip
    return {
        "uri": video.uri,
        "video_id": video.video_id,
        "clip_id": clip.clip_id,
        "start_s": clip.start_s,
        "end_s": clip.end_s,
        **result.caption.model_dump(mode="json"),
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }


def _error(failure: Failure, timings: dict[str, float], started: float) -> dict[str, Any]:
    timings["total_s"] = time.perf_counter() - started
    return {
        "uri": failure.uri,
        "video_id": failure.video_id,
        "error": {"stage": failure.stage, "reason": failure.reason},
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
