"""The shipped models' lineages: their settings are the shipped folders' records, and a rebuild chains its
stages, resumes after a crash and refuses to mix in stages trained otherwise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from dataengine.caption.engines import TransformersEngineConfig, build_engine
from dataengine.caption.models import resolve_model
from dataengine.config import ConfigError, apply_overrides
from trainer.distill import DistillConfig
from trainer.lineage import LINEAGES, Lineage, Stage, changed_settings, full_minutes, plan, rebuild
from trainer.vae import VAETrainConfig

DATAENGINE = str(Path(sys.executable).with_name("dataengine"))
REPO = Path(__file__).resolve().parents[2]
# the commits that shipped each captioner stage; p8c was never shipped: its settings are the lab notes' alone
SHIPPED_AT = {"p8e": "0dee104", "p8f": "788810b", "p8g": "0b65336", "p8h": "1e09a15"}
# a stage in seconds: 4 clips, 2 steps and 2 tower warm-up steps, on one thread
SMOKE = ["world_clips=4", "batch_size=2", "workers=1", "threads=1"]


def _recorded(path: Path) -> dict:
    return json.loads(path.read_text())["config"]


def test_the_captioner_lineage_ends_in_the_shipped_captioner_config() -> None:
    lineage = LINEAGES.get("world-captioner")
    assert [name for name, _ in plan(lineage)] == ["p8c", "p8e", "p8f", "p8g", "p8h"]
    _, last = plan(lineage, Path("/tmp/world-captioner"))[-1]
    recorded = _recorded(lineage.assets_dir / "distill.json")
    planned = last.model_dump(mode="json")
    # init is where the previous stage's folder lay: /tmp/world-captioner/p8g here, while the shipped run went
    # on from p8g after it had been copied into dataengine/assets/world-captioner. Every other field is equal.
    assert recorded.pop("init") == "dataengine/assets/world-captioner"
    assert planned.pop("init") == "/tmp/world-captioner/p8g"
    assert planned == recorded


@pytest.mark.parametrize("stage", sorted(SHIPPED_AT))
def test_each_shipped_captioner_stage_is_its_record_in_git_history(stage: str) -> None:
    """p8e-p8h were each shipped once: their distill.json at that commit is the lineage's stage, init aside
    (as above). The first two were trained by older code than today's (the lab notes, and Stage.note): the
    same settings, but today's dense head reads more, so a rebuild of them is not the same student."""
    shown = subprocess.run(
        ["git", "show", f"{SHIPPED_AT[stage]}:dataengine/assets/world-captioner/distill.json"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if shown.returncode:
        pytest.skip(f"commit {SHIPPED_AT[stage]} is not in this clone: {shown.stderr.strip()}")
    recorded = json.loads(shown.stdout)["config"]
    planned = dict(plan(LINEAGES.get("world-captioner")))[stage].model_dump(mode="json")
    del recorded["init"], planned["init"]
    assert planned == recorded


def test_the_vae_lineage_is_the_shipped_vae_config() -> None:
    lineage = LINEAGES.get("world-vae")
    ((name, config),) = plan(lineage)
    assert name == "world-vae" and config == VAETrainConfig()  # the defaults, as `train-vae` trained it
    assert config.model_dump(mode="json") == _recorded(lineage.assets_dir / "training.json")


def test_changed_settings_rebuild_the_config() -> None:
    """What --dry-run prints is the whole difference: applied to the defaults it gives the stage's config."""
    for name in LINEAGES:
        for _, config in plan(LINEAGES.get(name), Path("/tmp/out")):
            base = DistillConfig(pairs="x") if isinstance(config, DistillConfig) else VAETrainConfig()
            assert apply_overrides(base, changed_settings(config)) == config
    _, p8c = plan(LINEAGES.get("world-captioner"))[0]
    assert "patch_size=8" in changed_settings(p8c) and "freeze_positions=true" in changed_settings(p8c)


def test_smoke_settings_chain_and_scale_every_stage() -> None:
    lineage = LINEAGES.get("world-captioner")
    stages = plan(lineage, Path("/x"), minutes_scale=0.01, max_steps=3, extra=["world_clips=4"])
    assert [config.minutes for _, config in stages] == [0.95, 0.85, 0.75, 0.8, 0.8]
    for index, (_, config) in enumerate(stages):
        assert isinstance(config, DistillConfig)
        assert config.max_steps == 3 and config.tower_warmup_steps == 3 and config.world_clips == 4
        assert config.init == (str(Path("/x") / stages[index - 1][0]) if index else None)
    assert full_minutes(lineage) == 95 + 85 + 75 + 80 + 80 and full_minutes(LINEAGES.get("world-vae")) == 40
    with pytest.raises(ConfigError, match="minutes_scale must be > 0"):
        plan(lineage, minutes_scale=0)
    with pytest.raises(ConfigError, match="unknown key 'world_clip'"):
        plan(lineage, extra=["world_clip=4"])


def test_a_lineage_chains_init_itself() -> None:
    with pytest.raises(ValidationError, match="rebuild sets it"):
        Stage(name="a", trainer="distill", settings=("init=/tmp/a",))
    vae = Stage(name="v", trainer="vae")
    with pytest.raises(ValidationError, match="only distill stages go on"):
        Lineage(name="x", model="x", stages=(Stage(name="a", trainer="distill"), vae))


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """distill sets torch's threads for the process (threads=1 here); the other tests keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("restore_threads")
def test_a_smoke_rebuild_chains_five_stages_and_resumes(tmp_path: Path) -> None:
    lineage = LINEAGES.get("world-captioner")
    out = tmp_path / "wc"
    lines: list[str] = []
    final = rebuild(lineage, out, max_steps=2, extra=SMOKE, log=lines.append)
    names = [stage.name for stage in lineage.stages]
    assert final == out / "p8h" and sorted(p.name for p in out.iterdir()) == names
    assert any("smoke rebuild" in line and "not the shipped model" in line for line in lines)
    for index, name in enumerate(names):
        config = _recorded(out / name / "distill.json")
        assert config["init"] == (str(out / names[index - 1]) if index else None)
        assert config["max_steps"] == 2 and config["seed"] == 41 + index
    # the 8-px tower of the first stage is the last stage's: each went on from the one before
    assert json.loads((final / "config.json").read_text())["vision_config"]["patch_size"] == 8
    engine = build_engine(TransformersEngineConfig(model=resolve_model(str(final))))
    engine.setup()  # the project's transformers engine loads it, processor and all
    engine.teardown()

    lines.clear()
    rebuild(lineage, out, max_steps=2, extra=SMOKE, log=lines.append)  # all complete: nothing trains
    assert sum("complete, skipped" in line for line in lines) == 5
    shutil.rmtree(final)  # as if the run had died in its last stage
    before = (out / "p8g" / "distill.json").stat().st_mtime_ns
    lines.clear()
    rebuild(lineage, out, max_steps=2, extra=SMOKE, log=lines.append)
    assert sum("complete, skipped" in line for line in lines) == 4 and (final / "distill.json").is_file()
    assert (out / "p8g" / "distill.json").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match=r"p8c is a complete stage trained with other settings \(max_steps"):
        rebuild(lineage, out, max_steps=3, extra=SMOKE, log=lines.append)


@pytest.mark.slow  # two console-script starts, ~6 s each
def test_the_cli_dry_run_prints_the_stages(tmp_path: Path) -> None:
    done = subprocess.run(
        [DATAENGINE, "rebuild", "world-vae", "--out", str(tmp_path / "vae"), "--dry-run"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "world-vae (vae): the defaults" in done.stderr and "40 training minutes" in done.stderr
    assert not (tmp_path / "vae").exists()
    helped = subprocess.run(
        [DATAENGINE, "rebuild", "--help"], capture_output=True, text=True, timeout=300, check=False
    )
    help_text = " ".join(helped.stdout.split())
    minutes = full_minutes(LINEAGES.get("world-captioner"))
    assert f"{minutes:g} minutes of training at full scale" in help_text and "40 minutes" in help_text
    assert "dataengine eval-captions --recipe demo --n 32 --json" in help_text
