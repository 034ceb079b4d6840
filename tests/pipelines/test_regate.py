"""Today's gate on a run written earlier: inspect flags ok captions it would refuse, --regate re-judges the
shards' structured captions with their recorded confidence and writes a keep-list; runs written before the
gate's columns existed still read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from dataengine.caption.quality import QualityConfig
from dataengine.caption.schema import render_caption
from dataengine.shards import ShardConfig, ShardWriter, read_manifest
from pipelines.inspect_run import inspect_run
from pipelines.regate import regate_run, suspicious
from tests.dataengine.caption.examples import GOOD

LOOPING = GOOD.model_copy(update={"setting": "motion" * 30})
UNSURE = GOOD.model_copy(update={"summary": "a red circle moves right over blue checks"})
GARBLED = GOOD.model_copy(
    update={"subjects": [GOOD.subjects[0].model_copy(update={"position": "at (10010 px"})]}
)
FLOORS = ["--set", "caption.quality.min_mean_logprob=-0.5"]


def _sample(i: int, caption: Any, mean_logprob: float | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    key = f"{i:032x}"
    scores = {"mean_logprob": mean_logprob, "min_window_logprob": mean_logprob, "compression_ratio": 1.5}
    meta = {"structured": caption.model_dump(mode="json"), "caption_scores": scores}
    text = render_caption(caption)
    sample = {"latents.npy": np.zeros((4, 1, 2, 2), np.float16), "txt": text, "json": meta}
    row = {"clip_id": key, "caption": text, "caption_mean_logprob": mean_logprob,
           "caption_min_window_logprob": mean_logprob}  # fmt: skip
    return key, sample, row


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of four ok samples: one good, one looping, one the model was unsure of, one with a fragment."""
    out = tmp_path_factory.mktemp("regate")
    with ShardWriter(out, ShardConfig()) as writer:
        for i, (caption, mean) in enumerate([(GOOD, -0.1), (LOOPING, -0.1), (UNSURE, -0.9), (GARBLED, None)]):
            writer.write(*_sample(i, caption, mean))
    (out / "run.json").write_text(json.dumps({"recipe": "demo"}))
    return out


def test_regate_refuses_what_todays_gate_refuses_and_keeps_the_rest(run_dir: Path) -> None:
    found = regate_run(run_dir, QualityConfig(min_mean_logprob=-0.5))
    assert found.checked == 4 and found.keep == [f"{0:032x}"]
    reasons = dict(found.refused)
    assert reasons[f"{1:032x}"].startswith("loop: 'motion' repeated 30 times")
    assert reasons[f"{2:032x}"].startswith("low confidence: mean token log-prob -0.900")
    assert reasons[f"{3:032x}"] == "unbalanced bracket '(' in subjects.0.position"
    assert dict(found.reasons()) == {"loop": 1, "low confidence": 1, "unbalanced bracket '('": 1}


def test_inspect_flags_suspicious_ok_captions_from_the_manifest_alone(run_dir: Path) -> None:
    flagged = dict(suspicious(read_manifest(run_dir).to_pylist(), QualityConfig(min_mean_logprob=-0.5)))
    # the prose and the confidence columns are enough for loops and low confidence; the bracket needs fields
    assert set(flagged) == {f"{1:032x}", f"{2:032x}"}
    found = inspect_run(run_dir, gate=QualityConfig())
    assert [clip for clip, _ in found.suspicious] == [f"{1:032x}"]  # no floor: confidence is not judged
    assert found.caption_mean_logprob is not None and found.caption_mean_logprob.n == 3


def test_the_cli_writes_a_keep_list(run_dir: Path, tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "inspect",
        str(run_dir),
        "--regate",
        "--keep-list",
        str(keep),
    ]
    done = subprocess.run([*cmd, "--json", *FLOORS], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["regate"]["kept"] == 1 and report["regate"]["refused"] == 3
    assert len(report["suspicious"]) == 2
    assert keep.read_text() == f"{0:032x}\n"
    printed = subprocess.run([*cmd, *FLOORS], capture_output=True, text=True, check=False)
    assert "would refuse 3" in printed.stdout and "keep-list" in printed.stdout
    lonely = subprocess.run([*cmd[:-2]], capture_output=True, text=True, check=False)  # --regate alone
    assert lonely.returncode == 0
    wrong = subprocess.run([*cmd[:5], "--keep-list", str(keep)], capture_output=True, text=True, check=False)
    assert wrong.returncode == 2 and "--keep-list needs --regate" in wrong.stderr


def test_a_manifest_written_before_the_gate_columns_still_reads(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "manifest").mkdir()
    part = next((run_dir / "manifest").glob("*.parquet"))
    old = pq.read_table(part).drop_columns(["caption_mean_logprob", "caption_compression_ratio"])
    pq.write_table(old, tmp_path / "manifest" / part.name)
    table = read_manifest(tmp_path)
    assert table.num_rows == 4 and table.column("caption_mean_logprob").null_count == 4
    assert [c for c, _ in suspicious(table.to_pylist(), QualityConfig())] == [f"{1:032x}"]
