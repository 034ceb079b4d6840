"""``dataengine inspect`` on a run that lives on object storage (moto S3): a run written with the project's
ShardWriter into ``s3://``, two shard buckets and two partitions, read back through the same URL; the
pictures land beside the run."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import pytest

from cli.main import main
from dataengine.caption.quality import QualityConfig
from dataengine.shards import ShardConfig, ShardWriter
from dataengine.storage import Store
from pipelines.inspect_curation import HISTOGRAMS
from pipelines.inspect_run import SHEET, inspect_run
from pipelines.recipes import demo
from pipelines.regate import regate_run
from pipelines.report import write_run_json
from pipelines.runner import Counts
from tests.pipelines.test_regate import GOOD, LOOPING, _sample

BUCKETS = {"image-1x2x2": 3, "video-2x2x2": 2}


def write_bucketed_run(run: Store) -> None:
    """Ok samples in two buckets (one ShardWriter each, as the writer actors do), a filter drop with its
    score, partition 0 of 2's record and the run.json every partition shares."""
    i = 0
    for bucket, n in BUCKETS.items():
        with ShardWriter(run, ShardConfig(max_samples=2), f"p00of02-w00-{bucket}") as writer:
            for _ in range(n):
                key, sample, row = _sample(i, LOOPING if i == 0 else GOOD, -0.1)
                frames = int(bucket.split("-")[1].split("x")[0])
                sample["latents.npy"] = np.zeros((4, frames, 2, 2), np.float16)
                writer.write(key, sample, {**row, "bucket": bucket, "motion": 0.5})
                i += 1
            if bucket.startswith("video"):
                writer.record_failure(
                    {"clip_id": "f" * 32, "source": "/nowhere.mp4", "start_s": 0.0, "end_s": 1.0,
                     "status": "dropped", "stage": "filter", "error": "motion 0.001 < 0.01", "motion": 0.001}
                )  # fmt: skip
    write_run_json(run, demo(), ["inputs.txt"], Counts(), {}, time.time(), "completed", None, (0, 2))


@pytest.fixture
def s3_run(s3_bucket: str, s3_options: dict[str, Any]) -> Store:
    run = Store(f"{s3_bucket}/run", s3_options)
    write_bucketed_run(run)
    return run


def test_inspect_reads_a_run_url_and_writes_its_pictures_there(s3_run: Store) -> None:
    found = inspect_run(s3_run, gate=QualityConfig())
    assert found.out_dir == s3_run.url and found.by_status == {"ok": 5, "dropped": 1}
    assert found.buckets == BUCKETS and found.partitions == {"p00of02": "completed"}
    assert found.shards == 3 and found.shard_bytes > 0
    assert found.sheet == s3_run.uri(SHEET) and b"5 samples" in s3_run.read_bytes(SHEET)
    assert found.curation is not None and found.curation.histograms == s3_run.uri(HISTOGRAMS)
    assert s3_run.read_bytes(HISTOGRAMS)[:8] == b"\x89PNG\r\n\x1a\n"
    assert [clip for clip, _ in found.suspicious] == [f"{0:032x}"]
    again = regate_run(s3_run, QualityConfig())
    assert again.checked == 5 and [clip for clip, _ in again.refused] == [f"{0:032x}"]


def test_the_inspect_command_takes_a_run_url(
    s3_run: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Credentials and endpoint come from the environment (the session's moto server), as in production."""
    for extra, check in (
        (["--json"], lambda out: json.loads(out)["buckets"] == BUCKETS),
        ([], lambda out: "samples per shard bucket" in out and "partitions: p00of02 completed" in out),
    ):
        monkeypatch.setattr(sys, "argv", ["dataengine", "inspect", s3_run.url, *extra])
        with pytest.raises(SystemExit) as exited:
            main()
        out = capsys.readouterr().out
        assert exited.value.code in (0, None) and check(out), out
