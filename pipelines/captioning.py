"""Caption one video, start to end, in this process: what ``dataengine caption`` and the REST API call.

The whole video is one clip; a video with more frames than the caption window is captioned window by
window and fused. The result is one JSON-ready document, or a failure with its stage and reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dataengine.caption.engines import OpenAIEngineConfig, TransformersEngineConfig, VLLMEngineConfig
from dataengine.config import ConfigError
from dataengine.records import CaptionedClip, Clip, DecodedClip, Failure, Source, Video
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


@dataclass
class Prepared:
    """A video probed and decoded as one clip, ready for a caption stage (``decoded``), or why not
    (``error``: the caption document of a probe or decode failure)."""

    video: Video | None
    decoded: DecodedClip | None
    error: dict[str, Any] | None
    timings: dict[str, float]
    started: float


class TooLongError(ValueError):
    """The video is longer than the caller takes; the message says by how much."""


def prepare_video(
    uri: str, recipe: RecipeConfig, max_windows: int = 8, max_duration_s: float | None = None
) -> Prepared:
    """Probe and decode ``uri`` as one clip, its caption view at most ``max_windows`` caption windows long
    (longer videos are sampled sparser).

    Raises:
        TooLongError: the probe says it is longer than ``max_duration_s`` (nothing is decoded).
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    video = ProbeStage(recipe.probe).probe(Source.from_uri(uri))
    timings["probe_s"] = time.perf_counter() - started
    if isinstance(video, Failure):
        return Prepared(None, None, _error(video, timings, started), timings, started)
    if max_duration_s is not None and video.probe.duration_s > max_duration_s:
        seconds = video.probe.duration_s
        raise TooLongError(f"the clip is {seconds:.1f} s; this takes up to {max_duration_s:g} s")
    clip = Clip.of(video, index=0, start_s=0.0, end_s=round(video.probe.duration_s, 3))
    t0 = time.perf_counter()
    decoded = DecodeStage(_decode_config(recipe, max_windows)).decode(clip)
    timings["decode_s"] = time.perf_counter() - t0
    if isinstance(decoded, Failure):
        return Prepared(video, None, _error(decoded, timings, started), timings, started)
    return Prepared(video, decoded, None, timings, started)


def caption_document(prepared: Prepared, result: CaptionedClip | Failure, caption_s: float) -> dict[str, Any]:
    """The caption document of a prepared video from its caption stage's ``result``."""
    assert prepared.video is not None
    timings = {**prepared.timings, "caption_s": caption_s}
    if isinstance(result, Failure):
        return _error(result, timings, prepared.started)
    return _document(prepared.video, result, timings, prepared.started)


def caption_video(
    uri: str, recipe: RecipeConfig, stage: CaptionStage | None = None, max_windows: int = 8
) -> dict[str, Any]:
    """Probe, decode and caption ``uri`` as one clip; return the caption document (or ``error``).

    ``stage`` is a set-up caption stage to reuse; without it one is built, set up and torn down here.
    """
    prepared = prepare_video(uri, recipe, max_windows)
    if prepared.decoded is None:
        assert prepared.error is not None
        return prepared.error
    own = stage is None
    stage = stage or CaptionStage(recipe.caption)
    t0 = time.perf_counter()
    if own:
        stage.setup()
        prepared.timings["engine_setup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    try:
        (result,) = stage.process_batch([prepared.decoded])
    finally:
        if own:
            stage.teardown()
    return caption_document(prepared, result, time.perf_counter() - t0)


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
