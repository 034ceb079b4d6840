"""dataengine plan from the command line: the demo recipe end to end, and budgets refused with their fix."""

from __future__ import annotations

import json

from tests.cli.test_cli import run


def test_the_demo_plan_reports_every_stage_with_its_sources_and_a_cluster_estimate() -> None:
    done = run("plan", "--recipe", "demo", "--json", "--gpus", "8", "--gpu", "a100")
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(done.stdout.strip().splitlines()[-1])
    stages = {stage["stage"]: stage for stage in plan["stages"]}
    assert {"caption", "text", "encode", "train (video)"} <= set(stages)
    facts = {s: {f["name"]: f for f in stage["facts"]} for s, stage in stages.items()}
    # the DiT is fed what the encode and text stages produce
    assert facts["train (video)"]["latent in"]["value"] == facts["encode"]["latent shape"]["value"]
    text = f"{facts['text']['text tokens']['value']}x{facts['text']['text dim']['value']}"
    assert facts["train (video)"]["text in"]["value"] == text
    for stage in stages.values():
        assert stage["params"] > 0 and stage["flops_per_clip"] > 0
        assert all(f["source"] for f in stage["facts"])  # every number says where it came from
    estimate = plan["cluster_estimate"]
    rates = {rate["stage"]: rate["clips_per_hour"] for rate in estimate["stages"]}
    assert rates.keys() == stages.keys() and estimate["bound_by"] == min(rates, key=rates.__getitem__)


def test_a_caption_window_over_max_model_len_is_refused_before_anything_is_built() -> None:
    done = run(
        "plan", "--recipe", "gpu-qwen25vl-7b-wan", "--set", "split.max_clip_s=32",
        "--set", "decode.views.caption.max_frames=64", "--set", "caption.window_frames=64",
        "--set", "caption.engine.max_model_len=8192",
    )  # fmt: skip
    message = " ".join(done.stderr.split()) + " ".join(done.stdout.split())
    assert done.returncode == 2, message[-2000:]
    assert "caption.engine.max_model_len" in message and "Fix:" in message and "Traceback" not in message
