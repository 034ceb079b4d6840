"""``dataengine eval-captions`` end to end under vLLM: the shipped captioner reaches its documented fidelity
on the held-out world, the random tiny VLM scores near zero, and the report shows both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataengine.caption.models import SHIPPED

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("dataengine"))


def _eval(out: Path, n: int, *overrides: str) -> dict:
    sets = [arg for o in overrides for arg in ("--set", o)]
    cmd = [CLI, "eval-captions", "--recipe", "demo", "--n", str(n), "--out", str(out), "--json", *sets]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    scores: dict = json.loads(done.stdout)
    return scores


def test_the_shipped_captioner_meets_its_documented_fidelity(tmp_path: Path) -> None:
    documented = json.loads((SHIPPED["world-captioner"] / "fidelity.json").read_text())
    scores = _eval(tmp_path, 8)
    assert scores["engine"] == "vllm" and scores["model"] == "builtin:world-captioner"
    assert scores["clips"] == scores["captioned"] == 8
    # 8 clips in CI against the documented 32: a margin for the smaller sample.
    assert scores["fact_recall"] >= documented["fact_recall"] - 0.15
    assert scores["fact_precision"] >= documented["fact_precision"] - 0.15
    assert scores["per_attribute"]["background"] >= documented["per_attribute"]["background"] - 0.15
    # a right start region has its row and its column right
    assert min(scores["position_axes"].values()) >= scores["per_attribute"]["position"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img src='frames/clip_") == 8
    assert len(json.loads((tmp_path / "scores.json").read_text())["per_clip"]) == 8


def test_the_metric_separates_a_random_captioner(tmp_path: Path) -> None:
    scores = _eval(tmp_path, 2, "caption.engine.model=builtin:tiny-qwen2_5_vl", "caption.max_attempts=1")
    assert scores["model"] == "builtin:tiny-qwen2_5_vl"
    assert scores["fact_recall"] <= 0.1 and scores["recon_iou"] <= 0.1
