"""The console script, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataengine.shards import read_manifest
from tests.crafted import REFUSALS, ReferenceTrap

DATAENGINE = str(Path(sys.executable).with_name("dataengine"))


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DATAENGINE, *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    "command",
    ["", "synth", "probe", "clips", "caption", "run", "inspect", "dedup", "train", "sample", "demo"],
)
def test_help_answers(command: str) -> None:
    done = run(*([command] if command else []), "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout


def test_synth_then_probe_then_clips(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    assert run("synth", "--out", str(videos), "--n", "2", "--seed", "3").returncode == 0
    assert sorted(p.name for p in videos.iterdir()) == [
        "video_000.json",
        "video_000.mp4",
        "video_001.json",
        "video_001.mp4",
    ]
    probed = run("probe", "--json", str(videos))
    assert probed.returncode == 0, probed.stderr
    records = [json.loads(line) for line in probed.stdout.splitlines()]
    assert len(records) == 2 and all(r["probe"]["width"] == 320 for r in records)
    done = run("clips", str(videos), "--out", str(tmp_path / "clips"))
    assert done.returncode == 0, done.stderr
    assert "clips decoded" in done.stderr
    assert (tmp_path / "clips" / "contact_sheet.jpg").exists()


def test_a_bad_option_value_is_a_clear_error(tmp_path: Path) -> None:
    done = run("clips", str(tmp_path), "--out", str(tmp_path / "o"), "--window-s", "50")
    assert done.returncode == 2
    assert "configuration error" in done.stderr and "min_clip_s <= window_s <= max_clip_s" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    args = ("--n", "3", "--steps", "20", "--eval-clips", "2", "--samples", "1")
    done = run("demo", "--out", str(demo), *args)
    assert done.returncode == 0, done.stderr
    run_dir = demo / "run"
    assert list((run_dir / "shards").glob("*.tar")) and (run_dir / "run.json").exists()
    assert (run_dir / "contact_sheet.html").exists() and "time per step" in done.stderr
    assert (demo / "samples" / "00" / "sample.mp4").stat().st_size > 0
    assert (demo / "fidelity" / "report.html").exists() and (demo / "fidelity" / "scores.json").exists()
    assert "caption fact recall" in done.stderr and "DiT prompt adherence" in done.stderr
    scores = json.loads((demo / "scores.json").read_text())
    per_fact = scores["prompt_adherence_per_attribute"]
    assert {"background", "colour", "shape"} <= set(per_fact) and "prompt adherence per fact" in done.stderr
    assert all(0 <= row["through_the_vae"] <= 1 and 0 <= row["samples"] <= 1 for row in per_fact.values())
    assert "clips through the VAE" in done.stderr  # the closed loop's ceiling, beside the samples' score
    assert (demo / "through_the_vae" / "00.mp4").stat().st_size > 0
    assert (tmp_path / "demo" / "train" / "loss_curve.png").stat().st_size > 0
    assert list((tmp_path / "demo" / "train" / "checkpoints").glob("step_*.pt"))
    # the summary says what the caption gate refused; on the demo's inputs only real footage is refused
    assert "clips captioned" in " ".join(done.stderr.split())
    rows = read_manifest(run_dir).to_pylist()
    refused = [r["source"] for r in rows if r["stage"] == "caption"]
    assert not [source for source in refused if "/videos/video_" in source], refused
    # curation kept every world clip, and the duplicate index dropped the re-encoded copy of the first video
    copies = [r for r in rows if "/copies/" in (r["source"] or "") and r["clip_id"]]
    assert copies and all(r["stage"] == "dedup" and "near duplicate of" in r["error"] for r in copies), copies
    assert not [
        r for r in rows if "/videos/video_" in (r["source"] or "") and r["stage"] in ("filter", "dedup")
    ]
    curation = " ".join(done.stderr.split()).split("curation: ")[-1].split("captions: ")[0]
    assert "dropped before captioning:" in curation and "near duplicate" in curation, curation


def test_demo_refuses_an_unknown_training_recipe_before_any_work(tmp_path: Path) -> None:
    done = run("demo", "--out", str(tmp_path / "demo"), "--train-recipe", "nope")
    assert done.returncode == 2 and "known: cpu-mini, demo, gpu-dit-b" in " ".join(done.stderr.split())
    assert not (tmp_path / "demo").exists()


def test_caption_rejects_unknown_recipes_and_keys(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    unknown_recipe = run("caption", str(video), "--recipe", "nope")
    assert unknown_recipe.returncode == 2 and "known: cpu-small, demo" in unknown_recipe.stderr
    unknown_key = run("caption", str(video), "--set", "caption.sampling.max_tokenz=5")
    assert unknown_key.returncode == 2
    assert (
        "unknown key 'caption.sampling.max_tokenz'" in unknown_key.stderr
        and "max_tokens" in unknown_key.stderr
    )
    bad_value = run("caption", str(video), "--set", "caption.sampling.max_tokens=-1")
    assert bad_value.returncode == 2 and "greater than or equal to 1" in bad_value.stderr


def test_caption_of_a_broken_file_says_where_and_why(tmp_path: Path) -> None:
    video = tmp_path / "empty.mp4"
    video.write_bytes(b"")
    done = run("caption", str(video))
    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert document["error"] == {"stage": "probe", "reason": "empty file (0 bytes)"}


def test_probe_and_caption_refuse_inputs_that_point_elsewhere(
    reference_trap: ReferenceTrap, tmp_path: Path
) -> None:
    names = sorted(reference_trap.inputs)
    specs = [str(reference_trap.inputs[n]) for n in names] + [reference_trap.remote_url]
    done = run("probe", "--json", *specs, TMPDIR=str(tmp_path))  # the remote playlist is fetched under TMPDIR
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == len(specs)
    for name, record in zip([*names, "remote"], records, strict=True):
        assert record["stage"] == "probe" and REFUSALS[name] in record["reason"], (name, record)
    caption = run("caption", str(reference_trap.inputs["hls"]))
    assert caption.returncode == 1
    assert json.loads(caption.stdout)["error"] == {
        "stage": "probe",
        "reason": "a playlist or reference file (hls), not a self-contained video",
    }
    assert reference_trap.untouched()


def test_a_model_that_cannot_be_fetched_is_one_line_and_exit_3(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    assert run("synth", "--out", str(videos), "--n", "1").returncode == 0
    # cpu-small names hub checkpoints; with the hub offline, loading them must end in one readable line.
    done = run("caption", str(videos / "video_000.mp4"), "--recipe", "cpu-small", HF_HUB_OFFLINE="1")
    assert done.returncode == 3, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("model unavailable: cannot load 'Qwen/") and "--set caption.engine.model=" in last
    assert "Traceback" not in done.stderr


def test_usage_mistakes_exit_2_and_a_missing_run_exits_1(tmp_path: Path) -> None:
    keep_without_regate = run("inspect", str(tmp_path), "--keep-list", str(tmp_path / "keep.txt"))
    assert keep_without_regate.returncode == 2 and "--keep-list needs --regate" in keep_without_regate.stderr
    missing = run("inspect", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "has no manifest" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("bad", ["2/2", "3/2", "-1/2", "1", "a/b", "0/0", "1/2/3"])
def test_a_partition_that_is_not_i_of_n_is_a_usage_error_before_any_work(
    bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    monkeypatch.setattr(
        sys, "argv", ["dataengine", "run", "in.mp4", "--out", str(tmp_path), "--partition", bad]
    )
    with pytest.raises(SystemExit) as exited:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exited.value.code == 2 and "'--partition'" in err and "0 <= I < N" in err, err
    assert not list(tmp_path.iterdir())  # nothing was started


def test_a_partition_parses_as_i_of_n() -> None:
    from cli.data import parse_partition

    assert parse_partition("0/4") == (0, 4) and parse_partition("3/4") == (3, 4)
    assert parse_partition(None) is None


def test_every_mapped_failure_has_its_documented_code() -> None:
    from cli.main import EXIT_CODES, exit_code
    from dataengine.config import ConfigError
    from dataengine.media import MissingToolError
    from pipelines.errors import RunError

    assert exit_code(ConfigError("x")) == (2, "configuration error")
    assert exit_code(MissingToolError("x")) == (3, "missing tool")
    assert exit_code(RunError("x")) == (1, "run failed")
    assert exit_code(ZeroDivisionError()) is None  # a bug keeps its traceback
    docs = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    for _, code, label in EXIT_CODES:
        assert f"| {code} |" in docs and label in docs, f"docs/cli.md does not document exit {code} ({label})"
