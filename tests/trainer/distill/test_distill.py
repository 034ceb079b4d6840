"""Distillation end to end, a few steps: world pairs through the real decode, processor and chat template,
a student folder that transformers loads and generates from, a loss that goes down, and the settings it
refuses before any work. The students are the package's ``student`` fixture (conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataengine.caption.engines import TransformersEngineConfig, build_engine
from dataengine.caption.engines.base import EngineRequest, SamplingConfig
from dataengine.caption.prompts import DENSE
from dataengine.caption.schema import StructuredCaption
from dataengine.config import ConfigError
from dataengine.world.language import (
    read_caption,
)
from trainer.distill import DistillConfig, Pair, distill
from trainer.distill.loop import TrainLog, add_dense_head, make_optimizer, sincos_positions, warm_up_tower
from trainer.distill.targets import (
    DENSE_READINGS,
)
from trainer.distill.tokens import encode_pair, tokenizer_corpus

pytestmark = pytest.mark.slow


def test_world_pairs_are_decoded_clips_with_their_ground_truth(student: tuple[Path, list]) -> None:
    _, pairs = student
    assert len(pairs) == 12
    for pair in pairs:
        t, h, _, _ = pair.frames.frames_THWC.shape
        assert 4 <= t <= 8 and h == 112 and pair.frames.fps == 2.0
        (read,) = read_caption(StructuredCaption.model_validate_json(pair.caption))
        assert 1 <= len(read.objects) <= 3 and read.background is not None


def test_the_student_folder_loads_and_captions(student: tuple[Path, list]) -> None:
    folder, pairs = student
    assert json.loads((folder / "config.json").read_text())["model_type"] in ("qwen2_5_vl", "qwen3_vl")
    summary = json.loads((folder / "distill.json").read_text())
    assert summary["steps"] == 8 and summary["pairs"] == 12
    assert [step for step, _ in summary["grounding"]] == [2, 4, 6, 8]
    assert all(0 < mass < 1 for _, mass in summary["grounding"])
    assert [step for step, _ in summary["dense"]] == [2, 4, 6, 8]
    assert all(set(read) <= {*DENSE_READINGS, "shape"} for _, read in summary["dense"])
    assert all(0 <= right <= 1 for _, read in summary["dense"] for right in read.values())
    first, last = summary["losses"][0][1], summary["losses"][-1][1]
    assert last < first  # 8 steps of a from-scratch model: the loss falls fast on the JSON scaffolding
    assert (folder / "loss_curve.png").stat().st_size > 0
    engine = build_engine(TransformersEngineConfig(model=str(folder), dtype="float32"))
    engine.setup()
    try:
        frames = pairs[0].frames
        t = len(frames.frames_THWC)
        text = DENSE.render(duration_s=t / frames.fps, n_frames=t, fps=frames.fps)
        (out,) = engine.generate([EngineRequest(DENSE, text, frames, None, SamplingConfig(max_tokens=8))])
    finally:
        engine.teardown()
    assert out.output_tokens == 8 and out.text


def test_sincos_positions_match_the_patch_features(tmp_path: Path, student: tuple[Path, list]) -> None:
    """A new Qwen3-VL student's learned position table starts as a sine-cosine table at the patch features'
    scale (as built, N(0, 0.02), it is invisible next to them), different for every cell of its grid."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dataengine.caption.tiny_vlm import build_tiny_vlm
    from trainer.distill import PRESETS

    _, pairs = student
    config = PRESETS["tiny"].model_copy(update={"family": "qwen3_vl"})
    folder = build_tiny_vlm(tmp_path / "new", config, corpus=tokenizer_corpus([p.caption for p in pairs]))
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    example = encode_pair(processor, pairs[0], "dense-v1")
    visual = model.model.visual

    def rms(x: torch.Tensor) -> float:
        return float(x.detach().pow(2).mean().sqrt())

    with torch.no_grad():
        patches = rms(visual.patch_embed(example["pixel_values_videos"]))
        assert rms(visual.pos_embed.weight) < patches / 5  # as built
        sincos_positions(model, example)
        table = visual.pos_embed.weight
    assert abs(rms(table) / patches - 1) < 1e-3
    assert len(torch.unique(table, dim=0)) == len(table)


def test_weight_decay_is_on_the_matrices_not_the_tables(student: tuple[Path, list]) -> None:
    """The patch embedding's convolution is decayed as a matrix; the position and token tables, norms and
    biases are not."""
    import torch
    from transformers import AutoModelForImageTextToText

    folder, _ = student
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    optimizer = make_optimizer(model, DistillConfig(pairs="world", weight_decay=0.1))
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(params)
    for name, param in params.items():
        is_table = "embed_tokens" in name or "pos_embed" in name
        decayed = param.ndim >= 2 and not is_table
        assert group_of[id(param)]["weight_decay"] == (0.1 if decayed else 0.0), name


def test_a_frozen_position_table_is_saved_as_it_started(student: tuple[Path, list]) -> None:
    """freeze_positions with position_rms: eight steps later the saved table is still the sine-cosine table
    at that scale (to bfloat16's precision)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, pairs = student
    table_rms = json.loads((folder / "distill.json").read_text())["config"]["position_rms"]
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    table = getattr(model.model.visual, "pos_embed", None)
    if table is None:
        pytest.skip("Qwen2.5-VL's vision tower has no position table")
    saved = table.weight.detach().clone()
    example = encode_pair(AutoProcessor.from_pretrained(folder), pairs[0], "dense-v1")
    sincos_positions(model, example, table_rms)
    assert abs(float(saved.pow(2).mean().sqrt()) - table_rms) < 0.01
    assert torch.allclose(saved, table.weight, atol=table_rms * 2**-7)


def test_grounding_a_layer_the_student_lacks_is_a_config_error(
    tmp_path: Path, student: tuple[Path, list]
) -> None:
    folder, pairs = student
    family = json.loads((folder / "config.json").read_text())["model_type"]
    config = DistillConfig(
        pairs="world", init=str(folder), family=family, max_steps=1, grounding_weight=1.0, grounding_layer=4
    )
    with pytest.raises(ConfigError, match="grounding_layer=4: the student has 4 layers"):
        distill(config, tmp_path / "out", pairs[:2])


def test_distill_refuses_a_full_output_folder_before_it_makes_pairs(tmp_path: Path) -> None:
    """A full --out stops distill at once with a message (and the CLI with exit 2), not after the training;
    the folder keeps what it had."""
    from dataengine.model_cache import OutputExistsError

    out = tmp_path / "student"
    out.mkdir()
    (out / "model.safetensors").write_text("an earlier student")
    config = DistillConfig(pairs="world", world_clips=2000, minutes=30)  # minutes of work if it went on
    with pytest.raises(OutputExistsError, match="not empty: choose another output folder or remove it"):
        distill(config, out)
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    assert (out / "model.safetensors").read_text() == "an earlier student"


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda:99", "device='cuda:99': (torch sees no CUDA GPU|this machine has)"),
        ("gpu", "is not a torch device"),
    ],
)
def test_a_device_the_machine_lacks_is_refused_before_any_work(
    tmp_path: Path, device: str, message: str
) -> None:
    config = DistillConfig(pairs="world", world_clips=2000, minutes=30, device=device)
    with pytest.raises(ConfigError, match=message):
        distill(config, tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_a_new_student_with_8px_patches_trains_on_a_finer_token_grid(
    tmp_path: Path, student: tuple[Path, list]
) -> None:
    """``patch_size=8``: the student's tower and processor cut 8-px patches, so the text model reads four
    times the visual tokens (16-px merged cells), the world's targets follow that grid, and the loss falls;
    a student trained on from ``init`` keeps its own patches."""
    from transformers import AutoProcessor

    folder, pairs = student
    family = json.loads((folder / "config.json").read_text())["model_type"]
    if family != "qwen3_vl":
        pytest.skip("one family is enough: the option is the tower's patch size")
    config = DistillConfig(
        pairs="world", max_steps=6, minutes=None, batch_size=4, log_every=2, warmup_steps=2,
        patch_size=8, dense_weight=0.5, grounding_weight=0.5,
    )  # fmt: skip
    distill(config, tmp_path / "p8", pairs)
    assert json.loads((tmp_path / "p8" / "config.json").read_text())["vision_config"]["patch_size"] == 8
    losses = json.loads((tmp_path / "p8" / "distill.json").read_text())["losses"]
    assert losses[-1][1] < losses[0][1]
    # the 112 x 150 view in whole merged cells: 128 x 160 px of 16-px patches, 112 x 144 of 8-px ones
    for student_dir, grid in ((folder, (8, 10)), (tmp_path / "p8", (14, 18))):
        processor = AutoProcessor.from_pretrained(student_dir)
        item = encode_pair(processor, pairs[0], "dense-v1", world_targets=True)
        t, h, w = item["video_grid_thw"][0].tolist()
        assert (h, w) == grid
        video = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
        assert int((item["input_ids"] == video).sum()) == t * h * w // 4 == item["dense"].shape[0]
    with pytest.raises(ConfigError, match="patch_size=8: a student trained on from init keeps its own"):
        distill(config.model_copy(update={"init": str(folder)}), tmp_path / "again", pairs[:2])


def test_the_tower_warm_up_trains_the_tower_alone_on_what_its_tokens_show(student: tuple[Path, list]) -> None:
    """``tower_warmup_steps``: steps of the dense loss on the vision tower's merged tokens alone; the tower
    and the head learn (the readings rise), the text model does not change, and the log keeps the
    readings, the centre reading and its shape among them."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    config = DistillConfig(
        pairs="world",
        batch_size=4,
        dense_weight=0.5,
        tower_warmup_steps=12,
        tower_warmup_lr=3e-3,
        log_every=4,
    )
    optimizer = make_optimizer(model, config)
    head = add_dense_head(model, optimizer, config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    log = TrainLog()
    warm_up_tower(config, model, processor, pairs, optimizer, head, log)
    assert [step for step, _ in log.tower_warmup] == [4, 8, 12]
    first, last = log.tower_warmup[0][1], log.tower_warmup[-1][1]
    assert set(first) == {*DENSE_READINGS, "shape"}
    assert sum(last[k] for k in DENSE_READINGS) > sum(first[k] for k in DENSE_READINGS) + 0.1
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".visual." in name or name.startswith("visual.") for name in changed)
    assert any("patch_embed" in name for name in changed)


def test_the_tower_warm_up_needs_the_dense_loss_and_world_pairs(
    tmp_path: Path, student: tuple[Path, list]
) -> None:
    with pytest.raises(ValueError, match="set dense_weight > 0 too"):
        DistillConfig(pairs="world", tower_warmup_steps=10)
    folder, pairs = student
    run_like = [Pair(p.frames, p.caption) for p in pairs[:4]]  # a run's pairs: captions, no world targets
    family = json.loads((folder / "config.json").read_text())["model_type"]
    config = DistillConfig(
        pairs="world", init=str(folder), family=family, max_steps=1, minutes=None, batch_size=2,
        dense_weight=0.5, tower_warmup_steps=2,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="it needs --pairs world"):
        distill(config, tmp_path / "student", run_like)
