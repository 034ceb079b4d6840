"""What a job's ``overrides`` may change: tuning knobs pass, anything that names a model, a path, a URL, an
environment variable, an engine or resources is a 422 from a real uvicorn. That server queues jobs without
running them and its caption engine is an endpoint that does not answer: nothing here loads a model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataengine.config import ConfigError
from services.api.db import Job, Store, now
from services.api.jobs.service import JobRunner
from services.api.overrides import SAFE_OVERRIDES, refused
from services.api.settings import Settings
from tests.net import free_port
from tests.services.test_api import AUTH, Server, start_server

ATTACKER_ENGINE = {"kind": "openai", "base_url": "http://attacker/v1", "api_key_env": "AWS_SECRET_ACCESS_KEY"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api_root")
    (root / "videos").mkdir()
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Server]:
    server = start_server(
        root,
        DATAENGINE_RUN_JOBS="false",
        DATAENGINE_CAPTION_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
        DATAENGINE_EXTRA_OVERRIDES="pools.*.max_workers",
    )
    yield server
    server.stop()


def test_refused_matches_whole_keys_and_one_key_wildcards() -> None:
    allowed = [
        "split",
        "split.mode",
        "decode.views.caption.fps",
        "pools.decode.batch_size",
        "caption.sampling",
    ]
    assert refused(allowed, SAFE_OVERRIDES) == []
    denied = [
        "splitx",
        "decode.views",
        "pools.decode",
        "caption",
        "split.mode=fixed",
        " split",
        "split..mode",
    ]
    assert refused(denied, SAFE_OVERRIDES) == denied


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("caption.engine", ATTACKER_ENGINE),
        ("caption.engine.base_url", "http://attacker/v1"),
        ("caption.engine.api_key_env", "AWS_SECRET_ACCESS_KEY"),
        ("caption.engine.extra", {"trust_remote_code": True}),
        ("caption.engine.env", {"HF_HUB_OFFLINE": "0"}),
        ("caption.engine.model", "attacker/model"),
        ("encode.vae.model", "/etc"),
        ("text.model", "attacker/t5"),
        ("text", None),
        ("shards.prefix", "../../escape"),
        ("decode.views", {"../x": {"fps": 1}}),
        ("pools.caption.num_gpus", 8),
        ("probe.max_file_bytes", 1),
        ("inputs.allowed_roots", ["/"]),
        ("runner.max_retries", 9),
        ("split.mode=fixed", "x"),
    ],
)
def test_overrides_outside_the_allowlist_are_422(server: Server, root: Path, key: str, value: Any) -> None:
    body = {"inputs": [str(root / "videos")], "overrides": {"shards.max_samples": 2, key: value}}
    with server.client() as client:
        response = client.post("/v1/jobs", json=body, headers=AUTH)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert repr(key) in detail and "shards.max_samples" in detail and "pools.*.batch_size" in detail
        assert client.get("/v1/jobs", headers=AUTH).json()["total"] == 0  # nothing was queued


def test_tuning_knobs_and_the_operators_extra_keys_are_accepted(server: Server, root: Path) -> None:
    overrides = {
        "shards.max_samples": 2,
        "split": {"mode": "fixed", "window_s": 1.5},
        "decode.views.caption.fps": 1,
        "caption.sampling.seed": 7,
        "caption.quality.min_words": 2,
        "pools.decode.batch_size": 1,
        "pools.decode.max_workers": 1,  # DATAENGINE_EXTRA_OVERRIDES
    }
    with server.client() as client:
        created = client.post(
            "/v1/jobs", json={"inputs": [str(root / "videos")], "overrides": overrides}, headers=AUTH
        )
        assert created.status_code == 202, created.text
        job = client.get(f"/v1/jobs/{created.json()['id']}", headers=AUTH).json()
        assert job["overrides"] == overrides and job["status"] == "queued"
        bad_value = {"inputs": [str(root / "videos")], "overrides": {"split.window_s": -1}}
        assert client.post("/v1/jobs", json=bad_value, headers=AUTH).status_code == 422  # still validated


def test_a_job_queued_under_older_rules_fails_instead_of_running(tmp_path: Path) -> None:
    config = Settings(api_keys="k", allowed_roots=str(tmp_path), data_dir=tmp_path / "data")
    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    job = Job(
        id="old", status="queued", recipe="demo", inputs=[str(tmp_path)], progress={}, attempts=0,
        overrides={"caption.engine.base_url": "http://attacker/v1"}, out_dir=str(tmp_path / "data" / "old"),
        cancel_requested=False, created_at=now(),
    )  # fmt: skip
    with store.session() as session:
        session.add(job)
    runner = JobRunner(store, config, poll_s=0.05)
    runner.start()
    deadline = time.monotonic() + 10
    while runner.store_get("old").status == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.stop()
    stored = runner.store_get("old")
    assert (
        stored.status == "failed" and stored.pid is None and "caption.engine.base_url" in (stored.error or "")
    )
    assert not (tmp_path / "data" / "old").exists()  # never launched


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({"uri_schemes": "file,ftp"}, "DATAENGINE_URI_SCHEMES"),
        ({"extra_overrides": "inputs.allowed_roots"}, "DATAENGINE_EXTRA_OVERRIDES"),
        ({"extra_overrides": "*.model"}, "DATAENGINE_EXTRA_OVERRIDES"),
        ({"extra_overrides": "caption engine"}, "DATAENGINE_EXTRA_OVERRIDES"),
    ],
)
def test_settings_refuse_unknown_schemes_and_reserved_override_keys(
    tmp_path: Path, variables: dict[str, str], words: str
) -> None:
    config = Settings(api_keys="k", allowed_roots=str(tmp_path), data_dir=tmp_path / "data", **variables)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=words):
        config.check()
