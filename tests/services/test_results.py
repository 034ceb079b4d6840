"""A job's results, paged and streamed, from a real run folder of several manifest parts (one per shard,
failures-only parts among them): the same rows in the same order as the whole manifest, whatever the page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dataengine.shards import ShardConfig, ShardWriter, read_manifest
from services.api.jobs.results import COLUMNS, result_lines, result_page
from services.api.jobs.schemas import ResultRow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    with ShardWriter(out, ShardConfig(max_samples=3), "w00") as writer:
        for i in range(10):
            row = {"clip_id": f"c{i:02d}", "source": "file:///v.mp4", "caption": f"clip {i}"}
            writer.write(f"c{i:02d}", {"latents.npy": np.zeros((2, 2), np.float16), "txt": f"clip {i}"}, row)
    with ShardWriter(out, ShardConfig(), "failures") as writer:
        writer.record_failure(
            {"clip_id": "bad", "source": "file:///b.mp4", "stage": "probe", "error": "not a video"}
        )
    return out


def test_pages_read_the_rows_of_the_whole_manifest(run: Path) -> None:
    everything = read_manifest(run, COLUMNS).to_pylist()
    assert len(list((run / "manifest").iterdir())) == 5 and len(everything) == 11
    for offset, limit in [(0, 1), (0, 100), (2, 2), (3, 3), (4, 5), (10, 5), (11, 5), (50, 5)]:
        total, rows = result_page(run, offset, limit)
        assert total == 11 and rows == everything[offset : offset + limit], (offset, limit)


def test_the_stream_is_every_row_as_a_json_line(run: Path) -> None:
    lines = b"".join(result_lines(run)).decode().splitlines()
    rows = [
        ResultRow.model_validate(r).model_dump(mode="json") for r in read_manifest(run, COLUMNS).to_pylist()
    ]
    assert [json.loads(line) for line in lines] == rows


def test_a_job_without_a_manifest_has_no_results(tmp_path: Path) -> None:
    assert result_page(tmp_path, 0, 10) == (0, []) and list(result_lines(tmp_path)) == []
