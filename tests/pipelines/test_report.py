"""What a run leaves beside its data, on object storage (moto S3) as on a folder: run.json and the resume
check, and with partitions, the shared run.json plus one attempts file and one progress file per driver, so
that drivers sharing an output never overwrite each other's."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from dataengine.config import ConfigError, apply_overrides
from dataengine.storage import Store
from pipelines.errors import RunError
from pipelines.recipes import demo
from pipelines.report import (
    ProgressFile,
    check_resume,
    clear_own_partials,
    progress_name,
    write_run_header,
    write_run_json,
)
from pipelines.runner import Counts


def attempt(store: Store, status: str, partition: tuple[int, int] | None = None) -> str:
    counts = Counts(sources=2, samples=3)
    return write_run_json(store, demo(), ["a.mp4"], counts, {}, time.time(), status, None, partition)


def test_one_driver_keeps_its_layout_and_its_attempts_on_a_url(
    s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    store = Store(f"{s3_bucket}/run", s3_options)
    check_resume(store, demo(), force=False)  # nothing there yet
    assert attempt(store, "failed") == f"{s3_bucket}/run/run.json"
    attempt(store, "completed")
    run = json.loads(store.read_bytes("run.json"))
    assert run["recipe"] == "demo" and run["status"] == "completed" and "partitions" not in run
    assert [a["status"] for a in run["attempts"]] == ["failed", "completed"]
    assert run["counts"]["samples_written"] == 3 and run["config"] == demo().model_dump(mode="json")
    assert store.listdir() == ["run.json"]
    check_resume(store, apply_overrides(demo(), ["pools.decode.max_workers=9"]), force=False)  # resources
    other = apply_overrides(demo(), ["split.mode=fixed"])
    with pytest.raises(ConfigError, match=r"different config \(split changed\)"):
        check_resume(store, other, force=False)
    check_resume(store, other, force=True)
    with pytest.raises(ConfigError, match="written by one driver, this is 4 partitions"):
        check_resume(store, demo(), force=False, partition=(0, 4))


def test_partitions_share_run_json_and_keep_their_own_attempts_and_progress(tmp_path: Path) -> None:
    store = Store(tmp_path / "run")
    for i in (1, 0, 1):
        check_resume(store, demo(), force=False, partition=(i, 2))
        attempt(store, f"done {i}", (i, 2))
        ProgressFile(store, progress_name((i, 2))).write(Counts(samples=i), force=True)
    shared = json.loads(store.read_bytes("run.json"))
    assert shared["partitions"] == 2 and shared["config"] == demo().model_dump(mode="json")
    assert "attempts" not in shared and "counts" not in shared
    assert store.listdir("runs") == ["p00of02.json", "p01of02.json"]
    mine = json.loads(store.read_bytes("runs", "p01of02.json"))
    assert mine["partition"] == [1, 2] and len(mine["attempts"]) == 2
    assert sorted(store.listdir()) == ["progress-p00of02.json", "progress-p01of02.json", "run.json"]
    assert json.loads(store.read_bytes("progress-p01of02.json"))["samples_written"] == 1
    with pytest.raises(ConfigError, match="written by 2 partitions"):
        check_resume(store, demo(), force=False, partition=(0, 3))
    with pytest.raises(ConfigError, match="this is one driver"):
        check_resume(store, demo(), force=False)
    with pytest.raises(ConfigError, match="different config"):
        check_resume(store, apply_overrides(demo(), ["split.mode=fixed"]), force=False, partition=(0, 2))


def test_what_a_killed_driver_left_of_its_own_records_is_removed_and_a_stuck_header_is_named(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    for name in (".progress.json.partial", ".progress-p00of02.json.partial", ".run.json.partial"):
        (tmp_path / name).write_text("{")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / ".p00of02.json.partial").write_text("{")
    assert clear_own_partials(store, (0, 2)) == [
        ".progress-p00of02.json.partial",
        "runs/.p00of02.json.partial",
    ]
    with pytest.raises(RunError, match=r"\.run\.json\.partial stays"):  # the shared one is not ours alone
        write_run_header(store, demo(), (0, 2), wait_s=0.2)
    assert clear_own_partials(store, None) == [".progress.json.partial", ".run.json.partial"]
    attempt(store, "completed")  # its temporary name is free again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "runs"]


def test_an_output_that_cannot_be_reached_stops_the_run_with_a_message_before_ray_starts() -> None:
    from rich.console import Console

    from pipelines.launch import launch_run

    recipe = apply_overrides(
        demo(), ['output.storage_options={"s3": {"config_kwargs": {"retries": {"max_attempts": 1}}}}']
    )
    console = Console(record=True, width=200)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
        env.setenv("AWS_ACCESS_KEY_ID", "x")
        env.setenv("AWS_SECRET_ACCESS_KEY", "y")
        assert not launch_run(recipe, ["nowhere"], "s3://no-bucket/run", None, False, console)
    text = console.export_text()
    assert "cannot read the run at s3://no-bucket/run" in text and "AWS_ENDPOINT_URL" in text
