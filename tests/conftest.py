"""Shared fixtures: the test clips are made once per session with ffmpeg (a few seconds)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from dataengine.caption.engines import CaptionEngine, build_engine
from dataengine.caption.models import resolve_model
from dataengine.records import DecodedClip, Source
from dataengine.stages import DecodeStage, ProbeStage, SplitStage, Stage
from dataengine.world.generate import synthesize
from pipelines.local import run_chain
from pipelines.recipes import demo
from tests.crafted import ReferenceTrap, make_reference_trap
from tests.curation_cases import make_cases
from tests.media import (
    GoodClip,
    make_broken_inputs,
    make_good_clips,
    make_images,
    make_scene_cut_clip,
    make_world_stills,
)
from tests.net import free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Training tests run first. Distillation encodes batches in a forked DataLoader worker, and once the
    session's in-process vLLM CPU engine (``vllm_engine``) has run, a forked worker hangs in libgomp's team
    barrier on its first tensor copy (seen with gdb). A real ``dataengine distill`` is its own process, so
    only a test session mixes the two. Otherwise the order is pytest's (the sort is stable)."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/trainer/"))


@pytest.fixture(scope="session")
def good_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GoodClip]:
    return make_good_clips(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="session")
def broken_inputs(
    tmp_path_factory: pytest.TempPathFactory, good_clips: dict[str, GoodClip]
) -> dict[str, Path]:
    return make_broken_inputs(tmp_path_factory.mktemp("broken"), good_clips["h264_audio"].path)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """64x48 stills, one per image format (png, jpeg, bmp, tiff, webp, ppm)."""
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def scene_cut_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of testsrc, a hard cut, then 4 s of SMPTE bars."""
    return make_scene_cut_clip(tmp_path_factory.mktemp("cut") / "cut.mp4")


@pytest.fixture(scope="session")
def curation_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One clip per thing a curation check must tell apart (tests/curation_cases.py), made once."""
    return make_cases(tmp_path_factory.mktemp("curation_cases"))


@pytest.fixture(scope="module")
def reference_trap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceTrap]:
    """Inputs that point to other files and URLs, and the witnesses that say whether those were read
    (tests/crafted.py); one set per test module, so that a module's runs and servers can share it."""
    inputs, outside = tmp_path_factory.mktemp("crafted"), tmp_path_factory.mktemp("outside")
    with make_reference_trap(inputs, outside) as trap:
        yield trap


# --- captioning: decoded clips, one in-process vLLM engine and one vLLM server per session ----------------


@pytest.fixture(scope="session")
def caption_clips(tmp_path_factory: pytest.TempPathFactory) -> list[DecodedClip]:
    """Decoded clips of three synthetic videos, as the demo recipe decodes them (8 frames at 112 px)."""
    recipe = demo()
    videos = synthesize(tmp_path_factory.mktemp("caption_videos"), 3, seed=5, max_shots=1)
    sources = [Source.from_uri(v) for v in videos]
    stages: list[Stage[Any, Any]] = [
        ProbeStage(recipe.probe),
        SplitStage(recipe.split),
        DecodeStage(recipe.decode),
    ]
    clips = [r for r in run_chain(stages, sources) if isinstance(r, DecodedClip)]
    assert len(clips) >= 3
    return clips


@pytest.fixture(scope="session")
def caption_images(images: dict[str, Path]) -> list[DecodedClip]:
    """The png and jpeg stills as the demo recipe decodes them: one frame each."""
    return _decoded_stills(images)


@pytest.fixture(scope="session")
def world_stills(tmp_path_factory: pytest.TempPathFactory) -> list[DecodedClip]:
    """A png and a jpeg of a world frame as the demo recipe decodes them: stills the shipped captioner
    knows (on the testsrc stills above it may repeat itself, which the quality gate rightly refuses)."""
    return _decoded_stills(make_world_stills(tmp_path_factory.mktemp("world_stills")))


def _decoded_stills(stills: dict[str, Path]) -> list[DecodedClip]:
    recipe = demo()
    stages: list[Stage[Any, Any]] = [
        ProbeStage(recipe.probe),
        SplitStage(recipe.split),
        DecodeStage(recipe.decode),
    ]
    sources = [Source.from_uri(stills[name]) for name in ("png", "jpeg")]
    decoded = [r for r in run_chain(stages, sources) if isinstance(r, DecodedClip)]
    assert len(decoded) == 2
    return decoded


@pytest.fixture(scope="session")
def vllm_engine() -> Iterator[CaptionEngine]:
    """The demo recipe's in-process vLLM engine with the random tiny Qwen2.5-VL, set up once per session."""
    engine = build_engine(demo().caption.engine.model_copy(update={"model": "builtin:tiny-qwen2_5_vl"}))
    engine.setup()
    yield engine
    engine.teardown()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM OpenAI-compatible server for the tiny VLM on 127.0.0.1; yields its base URL."""
    model = resolve_model(demo().caption.engine.model)
    port = free_port()
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--served-model-name", SERVED_MODEL, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "4096", "--enforce-eager", "--limit-mm-per-prompt", '{"video": 1, "image": 1}',
        "--media-io-kwargs", '{"video": {"num_frames": -1}}',
        "--structured-outputs-config", '{"backend": "guidance", "disable_any_whitespace": true}',
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, timeout_s=180)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


SERVED_MODEL = "tiny-vlm"


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"vLLM server not healthy after {timeout_s} s:\n{log.read_text()[-3000:]}")


# --- object storage: one moto S3 server per session on 127.0.0.1 -------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto S3 server, a process of its own on 127.0.0.1; yields ``endpoint_url``, ``key`` and ``secret``.

    Not moto's in-process ``ThreadedMotoServer``: that imports flask into the test session, and vLLM's engine
    start-up then trips over werkzeug's context-local proxies (it probes every module's globals). For the
    rest of the session the environment points AWS clients at the server (credentials, region and
    ``AWS_ENDPOINT_URL``, which botocore, so s3fs, honours), so code given a bare ``s3://`` URL, subprocesses
    included, reaches it without storage options.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=sink,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/", timeout=2).close()  # ListBuckets
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        with pytest.MonkeyPatch.context() as env:
            for name in (
                "AWS_PROFILE",
                "AWS_SESSION_TOKEN",
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "http_proxy",
                "https_proxy",
            ):
                env.delenv(name, raising=False)
            env.setenv("AWS_ACCESS_KEY_ID", "testing")
            env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            env.setenv("AWS_ENDPOINT_URL", endpoint)
            yield {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_options(s3_server: dict[str, str]) -> dict[str, Any]:
    """s3fs storage options for the session's moto server."""
    return {**s3_server, "client_kwargs": {"region_name": "us-east-1"}}


@pytest.fixture
def s3_bucket(s3_server: dict[str, str]) -> str:
    """A new, empty bucket on the moto server: ``s3://<unique name>``."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=s3_server["endpoint_url"], region_name="us-east-1").create_bucket(
        Bucket=name
    )
    return f"s3://{name}"
