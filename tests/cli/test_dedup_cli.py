"""``dataengine dedup RUN_DIR`` through the console entry point (``cli.main.main``, in this process: the
interpreter start-up of a subprocess would cost more than the work): the eps sweep table, the four report
files, and the exit codes of cli/main.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cli.main import main
from dataengine.shards import read_manifest
from dataengine.storage import Store
from tests.pipelines.test_semdedup import planted, write_run


def dedup(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Exit code and stdout + stderr of ``dataengine dedup ARGS``."""
    monkeypatch.setattr(sys, "argv", ["dataengine", "dedup", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    return int(exited.value.code or 0), " ".join((out.out + out.err).split())


def test_dedup_prints_the_sweep_and_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    emb, _ = planted([3, 2], distinct=10)
    ids = write_run(tmp_path / "run", emb)
    code, out = dedup(monkeypatch, capsys, str(tmp_path / "run"), "--rewrite", str(tmp_path / "deduped"))
    assert code == 0, out
    assert "SemDeDup eps sweep (15 ok clips)" in out and "keeps 12, removes 3" in out
    folder = tmp_path / "run" / "dedup"
    assert {p.name for p in folder.iterdir()} == {
        "keep.parquet", "removed.parquet", "report.json", "similarity.png"
    }  # fmt: skip
    assert len(pq.read_table(folder / "keep.parquet")) == len(ids) - 3
    assert json.loads((folder / "report.json").read_text())["removed"] == 3
    assert f"rewrote 12 kept samples to {tmp_path / 'deduped'}" in out


def test_dedup_takes_run_urls(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run on S3 (moto; the credentials and endpoint come from the environment, as in production)."""
    emb, _ = planted([3, 2], distinct=10)
    write_run(Store(f"{s3_bucket}/run"), emb)
    code, out = dedup(monkeypatch, capsys, f"{s3_bucket}/run", "--rewrite", f"{s3_bucket}/deduped")
    assert code == 0, out
    assert (
        f"report: {s3_bucket}/run/dedup" in out and f"rewrote 12 kept samples to {s3_bucket}/deduped" in out
    )
    assert len(read_manifest(f"{s3_bucket}/deduped", columns=["clip_id"])) == 12


def test_a_run_without_embeddings_exits_1_and_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path, None)
    code, out = dedup(monkeypatch, capsys, str(tmp_path))
    assert code == 1 and out.startswith("run failed") and "--set filters.embed.kind=descriptor" in out


def test_a_bad_eps_exits_2_and_a_missing_run_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = dedup(monkeypatch, capsys, str(tmp_path), "--eps", "0")
    assert code == 2 and out.startswith("configuration error"), out
    code, out = dedup(monkeypatch, capsys, str(tmp_path / "nowhere"))
    assert code == 1 and out.startswith("not found"), out
