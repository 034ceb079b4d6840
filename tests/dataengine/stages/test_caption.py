"""The caption stage's gate, retries, windows and fusion, through the real openai engine against a fake
OpenAI-compatible server whose answers each test scripts (the server stands in for a model deployment)."""

from __future__ import annotations

import base64
import io
import random
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from dataengine.caption.engines import OpenAIEngineConfig
from dataengine.caption.schema import Event, StructuredCaption, render_caption
from dataengine.records import CaptionedClip, DecodedClip, Failure
from dataengine.stages.caption import CaptionConfig, CaptionStage
from tests.dataengine.caption.examples import GOOD
from tests.fake_openai import MODEL, FakeServer, Reply, ServerState, serve

REFUSAL = "I'm sorry, I can't describe this video."


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeServer, str]]:
    with serve() as running:
        yield running


def make_stage(server: tuple[FakeServer, str], timeout_s: float = 5, **overrides: object) -> CaptionStage:
    server[0].state = ServerState()
    engine = OpenAIEngineConfig(
        model=MODEL, base_url=server[1], backoff_s=0.01, timeout_s=timeout_s, max_retries=1
    )
    config = CaptionConfig.model_validate({"engine": engine, **overrides})
    stage = CaptionStage(config)
    stage.setup()
    return stage


def test_a_rejected_output_is_retried_with_new_sampling(
    server: tuple[FakeServer, str], caption_clips: list[DecodedClip]
) -> None:
    stage = make_stage(server)
    server[0].state.plan = lambda key, attempt: Reply(
        content=REFUSAL if attempt == 1 else GOOD.model_dump_json()
    )
    try:
        (result,) = stage.process_batch(caption_clips[:1])
    finally:
        stage.teardown()
    assert isinstance(result, CaptionedClip)
    caption = result.caption
    assert caption.attempts == 2 and caption.windows == 1
    assert (caption.engine, caption.model, caption.prompt_id) == ("openai", MODEL, "dense-v1")
    assert StructuredCaption.model_validate(caption.structured) == GOOD
    assert caption.caption == render_caption(GOOD) and caption.short_caption
    first, second = server[0].state.bodies
    assert first["temperature"] == 0.0 and second["temperature"] == 0.7 and second["seed"] != first["seed"]


def test_a_caption_that_never_passes_is_a_failure_with_every_reason(
    server: tuple[FakeServer, str], caption_clips: list[DecodedClip]
) -> None:
    stage = make_stage(server, max_attempts=3)
    answers = [
        Reply(content=REFUSAL),
        Reply(content='{"summary": "cut off', finish_reason="length"),
        Reply(content=""),
    ]
    server[0].state.plan = lambda key, attempt: answers[attempt - 1]
    try:
        (result,) = stage.process_batch(caption_clips[:1])
    finally:
        stage.teardown()
    assert isinstance(result, Failure) and result.stage == "caption"
    for reason in ("after 3 attempts", "refusal-like", "truncated", "empty output"):
        assert reason in result.reason


def test_long_clips_are_captioned_in_windows_then_fused(
    server: tuple[FakeServer, str], caption_clips: list[DecodedClip]
) -> None:
    stage = make_stage(server, window_frames=4)
    server[0].state.plan = lambda key, attempt: Reply(content=GOOD.model_dump_json())
    try:
        (result,) = stage.process_batch(caption_clips[:1])
    finally:
        stage.teardown()
    n_frames = len(caption_clips[0].views["caption"].frames_THWC)
    assert isinstance(result, CaptionedClip)
    assert result.caption.windows == -(-n_frames // 4) >= 2
    assert result.caption.prompt_id == "dense-v1+fuse-v1"
    bodies = server[0].state.bodies
    fuse = bodies[-1]["messages"][-1]["content"]
    assert [part["type"] for part in fuse] == ["text"] and "Merge them" in fuse[0]["text"]
    assert all(b["messages"][-1]["content"][0]["type"] == "video_url" for b in bodies[:-1])


def test_an_image_is_sent_as_one_image_with_the_image_prompt(
    server: tuple[FakeServer, str], caption_clips: list[DecodedClip], caption_images: list[DecodedClip]
) -> None:
    still = GOOD.model_copy(update={"events": [Event(start_s=0.0, end_s=1.0, description="nothing moves")]})
    stage = make_stage(server)
    server[0].state.plan = lambda key, attempt: Reply(content=still.model_dump_json())
    try:
        image, video = stage.process_batch([caption_images[0], caption_clips[0]])
    finally:
        stage.teardown()
    assert isinstance(image, CaptionedClip) and isinstance(video, CaptionedClip)
    assert (image.caption.prompt_id, video.caption.prompt_id) == ("dense-image-v1", "dense-v1")
    assert StructuredCaption.model_validate(image.caption.structured) == still
    bodies = {b["messages"][-1]["content"][-1]["text"]: b for b in server[0].state.bodies}
    (image_text,) = [text for text in bodies if "single still picture" in text]
    assert "1.0-second shot" in image_text
    parts = bodies[image_text]["messages"][-1]["content"]
    assert [part["type"] for part in parts] == ["image_url", "text"]
    jpeg = base64.b64decode(parts[0]["image_url"]["url"].removeprefix("data:image/jpeg;base64,"))
    assert Image.open(io.BytesIO(jpeg)).size == (150, 112)  # the demo caption view of a 64x48 still
    schema = bodies[image_text]["response_format"]["json_schema"]["schema"]
    assert schema["$defs"]["Event"]["properties"]["end_s"]["maximum"] == 1.0
    (video_body,) = [b for text, b in bodies.items() if text != image_text]
    assert video_body["messages"][-1]["content"][0]["type"] == "video_url"


@pytest.mark.timeout(120)
def test_under_faults_every_clip_ends_captioned_or_recorded(
    server: tuple[FakeServer, str], caption_clips: list[DecodedClip]
) -> None:
    stage = make_stage(server, timeout_s=0.5)

    def plan(key: str, attempt: int) -> Reply:
        draw = random.Random(f"{key}/{attempt}/{time.monotonic_ns()}").random()
        if draw < 0.3:
            return Reply(status=503)
        if draw < 0.5:
            return Reply(delay_s=3.0)
        return Reply(content=GOOD.model_dump_json())

    server[0].state.plan = plan
    batch = caption_clips * 4
    started = time.monotonic()
    try:
        results = stage.process_batch(batch)
    finally:
        stage.teardown()
    assert len(results) == len(batch)
    assert all(isinstance(r, CaptionedClip) or (isinstance(r, Failure) and r.reason) for r in results)
    assert time.monotonic() - started < 60


def test_enhance_turns_short_captions_into_structured_ones(server: tuple[FakeServer, str]) -> None:
    stage = make_stage(server)
    server[0].state.plan = lambda key, attempt: Reply(
        content=GOOD.model_dump_json() if "circle" in key else ""
    )
    try:
        results = stage.enhance(["a red circle on blue", "nothing useful"])
    finally:
        stage.teardown()
    assert results[0] == GOOD
    assert isinstance(results[1], str) and "empty output" in results[1]
    # the two requests go out concurrently, so either may reach the server first
    prompts = [body["messages"][-1]["content"][-1]["text"] for body in server[0].state.bodies]
    assert any("a red circle on blue" in prompt for prompt in prompts)
    assert any("nothing useful" in prompt for prompt in prompts)
