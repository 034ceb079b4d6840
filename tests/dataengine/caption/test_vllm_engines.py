"""The caption stage on the real vLLM engine (CPU build) with the tiny built-in VLM: in process, through a
real vLLM OpenAI-compatible server, and token parity with transformers. Its captions are nonsense words;
what is tested is that everything around them is real and every output goes through the quality gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataengine.caption.engines import (
    CaptionEngine,
    OpenAIEngineConfig,
    TransformersEngineConfig,
    build_engine,
)
from dataengine.caption.engines.base import EngineRequest, SamplingConfig
from dataengine.caption.engines.vllm_engine import VLLMEngine
from dataengine.caption.prompts import DENSE, DENSE_IMAGE
from dataengine.caption.schema import StructuredCaption, render_caption
from dataengine.records import CaptionedClip, DecodedClip, Failure
from dataengine.stages.caption import CaptionStage
from pipelines.gate_eval import SCORE_ONLY
from pipelines.recipes import demo
from tests.conftest import SERVED_MODEL

pytestmark = pytest.mark.slow

# The random tiny VLM writes loops and fragments that the gate rightly refuses (test_gate_eval.py shows the
# gate on a real captioner); what is under test here is everything around the model, so its output is only
# parsed and scored, not judged on its text, its confidence or its redrawing.
RANDOM = demo().caption.model_copy(update={"verify": None, "quality": SCORE_ONLY})


def check_results(
    results: list[CaptionedClip | Failure], engine: str, model: str, prompt_id: str = "dense-v1"
) -> None:
    assert any(isinstance(r, CaptionedClip) for r in results), [getattr(r, "reason", "") for r in results]
    for result in results:
        if isinstance(result, Failure):
            assert result.stage == "caption" and "quality gate" in result.reason
            continue
        caption = result.caption
        assert (caption.engine, caption.model) == (engine, model)
        assert caption.prompt_id.startswith(prompt_id) and caption.schema_version == "1"
        assert caption.caption == render_caption(StructuredCaption.model_validate(caption.structured))
        assert 1 <= caption.attempts <= 3 and caption.output_tokens > 0
        # both vLLM paths report token log-probs: the caption carries the gate's confidence numbers
        assert caption.mean_logprob is not None and caption.min_window_logprob is not None
        assert caption.min_window_logprob <= caption.mean_logprob <= 0 and caption.compression_ratio > 0


def test_a_batch_through_the_in_process_engine(
    vllm_engine: CaptionEngine, caption_clips: list[DecodedClip]
) -> None:
    stage = CaptionStage(RANDOM, engine=vllm_engine)
    results = stage.process_batch(caption_clips)
    assert [r.clip_id for r in results] == [c.clip_id for c in caption_clips]
    check_results(results, "vllm", "builtin:tiny-qwen2_5_vl")


def test_windows_and_fusion_on_the_in_process_engine(
    vllm_engine: CaptionEngine, caption_clips: list[DecodedClip]
) -> None:
    config = RANDOM.model_copy(update={"window_frames": 4})
    (result,) = CaptionStage(config, engine=vllm_engine).process_batch(caption_clips[:1])
    if isinstance(result, CaptionedClip):
        assert result.caption.windows == 2 and result.caption.prompt_id == "dense-v1+fuse-v1"
    else:
        assert "quality gate" in result.reason


def test_the_openai_engine_against_a_real_vllm_server(
    vllm_server: str, caption_clips: list[DecodedClip]
) -> None:
    engine = OpenAIEngineConfig(model=SERVED_MODEL, base_url=vllm_server, timeout_s=60)
    stage = CaptionStage(demo().caption.model_copy(update={"engine": engine}))
    with stage:
        results = stage.process_batch(caption_clips)
    check_results(results, "openai", SERVED_MODEL)


def test_images_through_the_in_process_engine(
    vllm_engine: CaptionEngine, caption_images: list[DecodedClip]
) -> None:
    stage = CaptionStage(RANDOM, engine=vllm_engine)
    results = stage.process_batch(caption_images)
    check_results(results, "vllm", "builtin:tiny-qwen2_5_vl", prompt_id="dense-image-v1")
    for result in results:
        if isinstance(result, CaptionedClip):
            structured = StructuredCaption.model_validate(result.caption.structured)
            assert all(e.end_s <= 1.0 for e in structured.events)  # the schema's bound for a 1 s still
            assert result.caption.windows == 1


def test_an_image_through_a_real_vllm_server(vllm_server: str, world_stills: list[DecodedClip]) -> None:
    """The server serves the demo's captioner, trained on world clips: it captions world stills."""
    engine = OpenAIEngineConfig(model=SERVED_MODEL, base_url=vllm_server, timeout_s=60)
    stage = CaptionStage(demo().caption.model_copy(update={"engine": engine}))
    with stage:
        results = stage.process_batch(world_stills)
    check_results(results, "openai", SERVED_MODEL, prompt_id="dense-image-v1")


def _same_tokens_from_transformers(vllm_engine: CaptionEngine, request: EngineRequest) -> None:
    hf = build_engine(TransformersEngineConfig(model=vllm_engine.config.model, dtype="float32"))
    hf.setup()
    try:
        (ours,) = hf.generate([request])
    finally:
        hf.teardown()
    (theirs,) = vllm_engine.generate([request])
    assert len(ours.token_ids) == request.sampling.max_tokens and ours.prompt_tokens == theirs.prompt_tokens
    assert ours.token_ids == theirs.token_ids
    # the same confidence from both: generate's scores and vLLM's sampled-token log-probs
    assert len(ours.logprobs) == len(theirs.logprobs) == len(ours.token_ids)
    assert ours.logprobs == pytest.approx(theirs.logprobs, abs=2e-2)


def test_transformers_and_vllm_give_the_same_tokens(
    vllm_engine: CaptionEngine, caption_clips: list[DecodedClip]
) -> None:
    frames = caption_clips[0].views["caption"]
    text = DENSE.render(duration_s=2.0, n_frames=len(frames.frames_THWC), fps=frames.fps)
    request = EngineRequest(DENSE, text, frames, None, SamplingConfig(temperature=0.0, max_tokens=24))
    _same_tokens_from_transformers(vllm_engine, request)


def test_transformers_and_vllm_give_the_same_tokens_for_an_image(
    vllm_engine: CaptionEngine, caption_images: list[DecodedClip]
) -> None:
    frames = caption_images[0].views["caption"]
    text = DENSE_IMAGE.render(duration_s=1.0, n_frames=1, fps=1.0)
    request = EngineRequest(DENSE_IMAGE, text, frames, None, SamplingConfig(temperature=0.0, max_tokens=24))
    assert isinstance(vllm_engine, VLLMEngine) and frames.shape[0] == 1
    assert set(vllm_engine.prompt_input(request)["multi_modal_data"]) == {"image"}
    _same_tokens_from_transformers(vllm_engine, request)


def test_dataengine_caption_prints_the_caption_json(caption_clips: list[DecodedClip]) -> None:
    video = caption_clips[0].clip.path
    cli = str(Path(sys.executable).with_name("dataengine"))
    done = subprocess.run([cli, "caption", video], capture_output=True, text=True, timeout=600, check=False)
    document = json.loads(done.stdout)
    for key in ("uri", "video_id", "clip_id", "engine", "model", "prompt_id", "timings"):
        assert key in document, key
    if done.returncode == 0:
        for key in ("caption", "short_caption", "structured"):
            assert key in document, key
        assert document["engine"] == "vllm" and document["model"] == demo().caption.engine.model
    else:
        assert done.returncode == 1 and document["error"]["stage"] == "caption"
