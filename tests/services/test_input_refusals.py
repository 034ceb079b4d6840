"""Inputs that point elsewhere, sent to a real uvicorn: ``POST /v1/captions`` refuses each at probe, by upload
and by uri, and nothing they name is read. Refusals come before any captioning, so this server's caption
engine is an endpoint that does not answer (no model is loaded); ``POST /v1/jobs`` with the same inputs runs
inside the job of test_api.py, which has the real engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crafted import REFUSALS, ReferenceTrap, make_reference_trap
from tests.net import free_port
from tests.services.test_api import AUTH, Server, start_server


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api_root")


@pytest.fixture(scope="module")
def reference_trap(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceTrap]:
    """The crafted inputs inside the API's allowed root; the video they name outside it."""
    with make_reference_trap(root / "crafted", tmp_path_factory.mktemp("outside")) as trap:
        yield trap


@pytest.fixture(scope="module")
def server(
    root: Path, reference_trap: ReferenceTrap, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    fetched = tmp_path_factory.mktemp("api_tmp")  # the server fetches remote inputs under TMPDIR
    server = start_server(root, DATAENGINE_CAPTION_BASE_URL=nowhere, TMPDIR=str(fetched))
    yield server
    server.stop()


def refused_at_probe(response_json: dict[str, object], name: str) -> bool:
    error = response_json.get("error")
    return (
        isinstance(error, dict)
        and error["stage"] == "probe"
        and REFUSALS[name] in error["reason"]
        and "caption" not in response_json
    )


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_captions_by_uri_refuse_inputs_that_point_elsewhere(
    server: Server, reference_trap: ReferenceTrap, name: str
) -> None:
    uri = reference_trap.remote_url if name == "remote" else str(reference_trap.inputs[name])
    with server.client() as client:
        response = client.post("/v1/captions", json={"uri": uri}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert refused_at_probe(response.json(), name), response.json()
    assert reference_trap.untouched()


# No image-sequence pattern here: the server stores an upload under a name of its own, so it is one file.
@pytest.mark.parametrize("name", ["hls", "hls_http", "ffconcat"])
def test_captions_by_upload_refuse_inputs_that_point_elsewhere(
    server: Server, reference_trap: ReferenceTrap, root: Path, name: str
) -> None:
    crafted = reference_trap.inputs[name]
    with server.client() as client:
        files = {"file": (crafted.name, crafted.read_bytes())}
        response = client.post("/v1/captions", files=files, headers=AUTH)
    assert response.status_code == 200, response.text
    assert refused_at_probe(response.json(), name), response.json()
    assert not list((root / "data" / "uploads").iterdir())  # the upload is not kept
    assert reference_trap.untouched()
