"""The REST API against a real uvicorn on 127.0.0.1: auth, a job to `succeeded` with results, cancel, restart
recovery, hostile inputs, 413, captions, metrics, and schemathesis over /openapi.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dataengine.world.generate import synthesize
from tests.crafted import REFUSALS, RecordingServer, ReferenceTrap, make_reference_trap
from tests.net import free_port

pytestmark = pytest.mark.slow
KEY = "test-key-1"
AUTH = {"X-API-Key": KEY}


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    root: Path
    first_caption: httpx.Response | None = None

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)


def start_server(root: Path, **env: str) -> Server:
    port = free_port()
    variables = {
        **os.environ, "DATAENGINE_API_KEYS": f"other-key,{KEY}", "DATAENGINE_ALLOWED_ROOTS": str(root),
        "DATAENGINE_DATA_DIR": str(root / "data"), "DATAENGINE_MAX_UPLOAD_MB": "1", **env,
    }  # fmt: skip
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = (root / f"server-{port}.log").open("wb")
    proc = subprocess.Popen(cmd, env=variables, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, root)
    wait_for(lambda: _healthy(server), 60, "the API did not come up")
    return server


def _healthy(server: Server) -> bool:
    assert server.proc.poll() is None, "the API exited"
    try:
        return httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check: Callable[[], Any], timeout_s: float, message: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(message)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api_root")
    synthesize(root / "videos", 2, seed=3, max_shots=1)  # 320x240: the world the demo captioner knows
    (root / "outside_link").symlink_to("/etc")
    return root


@pytest.fixture(scope="module")
def reference_trap(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceTrap]:
    """Inputs that point elsewhere (tests/crafted.py) inside the allowed root; what they name outside it."""
    with make_reference_trap(root / "crafted", tmp_path_factory.mktemp("outside")) as trap:
        yield trap


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Server]:
    server = start_server(root)
    with server.client() as client:  # the in-process engine takes many seconds to load; the API is up first
        server.first_caption = client.post("/v1/captions", json={"uri": str(root / "videos")}, headers=AUTH)
    yield server
    server.stop()


def test_captions_while_the_engine_starts_are_503_with_retry_after(server: Server) -> None:
    early = server.first_caption
    assert early is not None and early.status_code == 503, early
    assert int(early.headers["Retry-After"]) > 0 and "starting" in early.json()["detail"]


def job_status(client: httpx.Client, job_id: str, states: tuple[str, ...]) -> dict[str, Any] | None:
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    return job if job["status"] in states else None


def test_keys_are_required(server: Server) -> None:
    with server.client() as client:
        assert client.get("/v1/jobs").status_code == 401
        assert client.get("/v1/jobs", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/jobs", headers=AUTH).status_code == 200
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.get("/healthz").status_code == 200  # outside /v1: no key


def test_a_job_runs_to_succeeded_and_its_results_have_captions(
    server: Server, root: Path, reference_trap: ReferenceTrap
) -> None:
    """Its inputs also hold the crafted files that point elsewhere: each is a probe failure in the results."""
    crafted = {str(path): name for name, path in reference_trap.inputs.items()}
    crafted[reference_trap.remote_url] = "remote"
    with server.client() as client:
        body = {"inputs": [str(root / "videos"), *crafted], "overrides": {"shards.max_samples": 2}}
        created = client.post("/v1/jobs", json=body, headers=AUTH)
        assert created.status_code == 202 and created.json()["status"] == "queued"
        job_id = created.json()["id"]
        job = wait_for(lambda: job_status(client, job_id, ("succeeded", "failed")), 300, "job not done")
        assert job["status"] == "succeeded", job["error"]
        assert job["progress"]["samples_written"] >= 2 and job["started_at"] and job["finished_at"]
        results = client.get(f"/v1/jobs/{job_id}/results", params={"limit": 1}, headers=AUTH).json()
        assert results["total"] >= 2 and len(results["items"]) == 1
        everything = client.get(f"/v1/jobs/{job_id}/results", headers=AUTH).json()["items"]
        streamed = client.get(f"/v1/jobs/{job_id}/results.ndjson", headers=AUTH)
        assert streamed.headers["content-type"].startswith("application/x-ndjson")
        assert [json.loads(line) for line in streamed.text.splitlines()] == everything
        assert all(r["caption"] and r["shard"] for r in everything if r["status"] == "ok")
        # the caption gate's numbers travel with each result: a client can filter without captioning again
        assert all(r["caption_mean_logprob"] is not None for r in everything if r["status"] == "ok")
        assert all(r["caption_redraw_psnr"] >= 13 for r in everything if r["status"] == "ok")
        refused = {r["source"]: r for r in everything if r["stage"] == "probe"}
        for spec, name in crafted.items():
            row = refused[spec if name == "remote" else f"file://{spec}"]
            assert row["status"] == "failed" and REFUSALS[name] in row["error"], row
        assert not any(r["status"] == "ok" and r["source"] in refused for r in everything)
        assert reference_trap.untouched()
        listed = client.get("/v1/jobs", params={"limit": 5}, headers=AUTH).json()
        assert job_id in [j["id"] for j in listed["items"]]
        metrics = client.get("/metrics").text
        assert (
            'dataengine_jobs{state="succeeded"}' in metrics and "dataengine_clips_processed_total" in metrics
        )
        assert 'handler="/v1/jobs"' in metrics


def test_a_job_reads_nothing_its_lists_and_folders_lead_to_outside_the_roots(
    server: Server, root: Path, reference_trap: ReferenceTrap, tmp_path: Path
) -> None:
    """A remote list and a local list naming files outside the root, and a walked folder holding a symlink out
    of it: each is an input failure of the job, and the file outside (the tripwire) is never opened."""
    secret = reference_trap.tripwire.path
    (tmp_path / "in.txt").write_text(f"{secret}\nfile:///etc/passwd\n")
    (root / "lists").mkdir()
    (root / "lists" / "in.txt").write_text("../outside_link/hostname\n../links/garbage.mp4\n")
    (root / "links").mkdir()
    (root / "links" / "garbage.mp4").write_bytes(b"not a video")  # the one input the job may read
    (root / "links" / "secret.mp4").symlink_to(secret)
    refused = [f"file://{secret}", "file:///etc/passwd", f"file://{root}/outside_link/hostname"]
    refused.append(f"file://{root}/links/secret.mp4")
    with RecordingServer(tmp_path) as lists, server.client() as client:
        body = {"inputs": [f"{lists.url}/in.txt", str(root / "lists" / "in.txt"), str(root / "links")]}
        job_id = client.post("/v1/jobs", json=body, headers=AUTH).json()["id"]
        job = wait_for(lambda: job_status(client, job_id, ("succeeded", "failed")), 300, "job not done")
        assert job["status"] == "succeeded", job["error"]
        assert set(lists.requests) == {"/in.txt"}  # the list (fsspec may ask twice), nothing it names
    rows = {r["source"]: r for r in client_rows(server, job_id)}
    for source in refused:
        assert rows[source]["stage"] == "input" and "outside the allowed roots" in rows[source]["error"], rows
    assert rows[f"file://{root}/links/garbage.mp4"]["stage"] == "probe"
    assert len(rows) == 5 and reference_trap.tripwire.opened == 0


@pytest.mark.parametrize(
    ("inputs", "status"),
    [
        (["/etc/passwd"], 403),
        (["{root}/videos/../../../../etc/passwd"], 403),
        (["{root}/outside_link/passwd"], 403),  # a symlink inside the root that leads out
        (["gopher://example.com/x"], 403),
        (["file:///etc/passwd"], 403),
        ([], 422),
    ],
)
def test_hostile_job_inputs_are_refused(server: Server, root: Path, inputs: list[str], status: int) -> None:
    body = {"inputs": [i.format(root=root) for i in inputs]}
    with server.client() as client:
        response = client.post("/v1/jobs", json=body, headers=AUTH)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 422),
        (b'{"inputs": ["x"], "unknown": 1}', 422),
        (b'{"inputs": ["{root}/videos"], "recipe": "nope"}', 422),
        (b'{"inputs": ["{root}/videos"], "overrides": {"inputs.cache_dir": "/etc"}}', 422),
        (b'{"inputs": ["{root}/videos"], "overrides": {"shards.max_samplez": 3}}', 422),
    ],
)
def test_malformed_job_requests_are_422(server: Server, root: Path, body: bytes, status: int) -> None:
    content = body.replace(b"{root}", str(root).encode())
    headers = {**AUTH, "content-type": "application/json"}
    with server.client() as client:
        response = client.post("/v1/jobs", content=content, headers=headers)
    assert response.status_code == status, response.text


def test_cancel_stops_a_job(server: Server, root: Path) -> None:
    with server.client() as client:
        job_id = client.post("/v1/jobs", json={"inputs": [str(root / "videos")]}, headers=AUTH).json()["id"]
        cancelled = client.delete(f"/v1/jobs/{job_id}", headers=AUTH)
        assert cancelled.status_code == 200
        job = wait_for(lambda: job_status(client, job_id, ("cancelled",)), 60, "not cancelled")
        assert job["finished_at"]
        assert client.delete(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 409
        assert client.delete("/v1/jobs/nope", headers=AUTH).status_code == 404


def test_uploads_over_the_limit_get_413_while_streaming(server: Server) -> None:
    big = b"\0" * (2 * 2**20)
    with server.client() as client:
        declared = client.post("/v1/captions", files={"file": ("big.mp4", big)}, headers=AUTH)
        assert declared.status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while the body streams
            yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
            for _ in range(32):
                yield b"\0" * 2**16

        streamed = client.post(
            "/v1/captions",
            content=chunks(),
            headers={**AUTH, "content-type": "multipart/form-data; boundary=x"},
        )
        assert streamed.status_code == 413


def test_captions_by_upload_and_by_uri(server: Server, root: Path) -> None:
    video = root / "videos" / "video_000.mp4"
    with server.client() as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, 240, "the caption engine never got ready")
        by_uri = client.post("/v1/captions", json={"uri": str(video)}, headers=AUTH)
        assert by_uri.status_code == 200 and by_uri.json()["caption"], by_uri.text
        upload = client.post("/v1/captions", files={"file": ("clip.mp4", video.read_bytes())}, headers=AUTH)
        assert upload.status_code == 200 and upload.json()["uri"] == "upload:clip.mp4"
        garbage = client.post("/v1/captions", files={"file": ("x.mp4", b"garbage")}, headers=AUTH)
        assert garbage.status_code == 200 and garbage.json()["error"]["stage"] == "probe"
        outside = client.post("/v1/captions", json={"uri": "/etc/hostname"}, headers=AUTH)
        assert outside.status_code == 403
        assert (
            client.post(
                "/v1/captions", content=b"x", headers={**AUTH, "content-type": "text/plain"}
            ).status_code
            == 415
        )
        assert "dataengine_caption_seconds_count" in client.get("/metrics").text


def test_a_restart_resumes_the_job_that_was_running(tmp_path: Path, root: Path) -> None:
    own = tmp_path / "root"
    own.mkdir()
    subprocess.run(["cp", "-r", str(root / "videos"), str(own / "videos")], check=True)
    first = start_server(own)
    with first.client() as client:
        body = {"inputs": [str(own / "videos")], "overrides": {"shards.max_samples": 1}}
        job_id = client.post("/v1/jobs", json=body, headers=AUTH).json()["id"]
        wait_for(lambda: job_status(client, job_id, ("running",)), 60, "the job never started")
    first.stop(signal.SIGKILL)  # the API dies; the run it started lives on in its own process group
    second = start_server(own)
    try:
        with second.client() as client:
            job = wait_for(lambda: job_status(client, job_id, ("succeeded", "failed")), 300, "job not done")
        assert job["status"] == "succeeded" and job["attempts"] == 2, job
        rows = client_rows(second, job_id)
        ok = [r["clip_id"] for r in rows if r["status"] == "ok"]
        assert ok and len(ok) == len(set(ok))  # resumed exactly once
    finally:
        second.stop()


def client_rows(server: Server, job_id: str) -> list[dict[str, Any]]:
    with server.client() as client:
        items: list[dict[str, Any]] = client.get(f"/v1/jobs/{job_id}/results", headers=AUTH).json()["items"]
        return items


CHECKS = (  # no 5xx, and every answer is one the OpenAPI document describes
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)


def test_no_request_the_schema_allows_gets_a_server_error_or_an_undocumented_answer(server: Server) -> None:
    """schemathesis generates requests from /openapi.json: valid and invalid, every route and content type."""
    with server.client() as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, 240, "the caption engine never got ready")
    cmd = [
        str(Path(sys.executable).parent / "st"), "run", f"{server.url}/openapi.json", "--checks", CHECKS,
        "-H", f"X-API-Key: {KEY}", "--max-examples", "15", "--generation-deterministic",
        "--phases", "examples,coverage,fuzzing", "--workers", "1", "--request-timeout", "120",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
