"""Distillation end to end, a few steps: world pairs through the real decode, processor and chat template,
a student folder that transformers loads and generates from, and a loss that goes down."""

from __future__ import annotations

import json
import math
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from dataengine.caption.engines import TransformersEngineConfig, build_engine
from dataengine.caption.engines.base import EngineRequest, SamplingConfig
from dataengine.caption.prompts import DENSE
from dataengine.caption.schema import StructuredCaption
from dataengine.config import ConfigError
from dataengine.world.language import (
    CAMERAS,
    MOTIONS,
    OCTANTS,
    PATTERNS,
    SHAPES,
    SIZE_EDGES,
    SIZES,
    motion_of,
    read_caption,
    region_of,
)
from trainer.distill import DistillConfig, Pair, distill, world_pairs
from trainer.distill.config import GROUNDING_ATTENTION
from trainer.distill.loop import TrainLog, add_dense_head, make_optimizer, sincos_positions, warm_up_tower
from trainer.distill.losses import digit_weights, weighted_loss, world_loss
from trainer.distill.targets import (
    DENSE_CLASSES,
    DENSE_READINGS,
    HEADING_BINS,
    PLACE_BINS,
    heading_bin,
    split_dense_targets,
)
from trainer.distill.tokens import collate, encode_pair, encoded_batches, tokenizer_corpus

pytestmark = pytest.mark.slow
_TABLE_RMS = 3.0  # the fixture's students start their Qwen3-VL position table at this scale and freeze it


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def student(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    work = tmp_path_factory.mktemp("distill")
    config = DistillConfig(
        pairs="world", world_clips=12, max_steps=8, minutes=None, batch_size=4, log_every=2, warmup_steps=2,
        family=request.param, digit_weight=0.5, freeze_positions=True, position_rms=_TABLE_RMS,
        grounding_weight=0.5, dense_weight=0.5,
    )  # fmt: skip
    pairs = world_pairs(config.world_clips, config.seed, config.view, work, workers=1)
    distill(config, work / "student", pairs)
    return work / "student", pairs


def test_world_pairs_are_decoded_clips_with_their_ground_truth(student: tuple[Path, list]) -> None:
    _, pairs = student
    assert len(pairs) == 12
    for pair in pairs:
        t, h, _, _ = pair.frames.frames_THWC.shape
        assert 4 <= t <= 8 and h == 112 and pair.frames.fps == 2.0
        (read,) = read_caption(StructuredCaption.model_validate_json(pair.caption))
        assert 1 <= len(read.objects) <= 3 and read.background is not None


def test_only_the_answer_is_learned(student: tuple[Path, list]) -> None:
    from transformers import AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    item = encode_pair(processor, pairs[0], "dense-v1")
    learned = item["input_ids"][item["labels"] != -100]
    assert processor.tokenizer.decode(learned) == pairs[0].caption + "<|im_end|>"
    t = len(pairs[0].frames.frames_THWC)
    assert item["video_grid_thw"].tolist()[0][0] == -(-t // 2)  # frames go in pairs, an odd last one repeated


def test_digit_weight_scales_only_the_digit_targets(student: tuple[Path, list]) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    tokenizer = processor.tokenizer
    batch = collate([encode_pair(processor, p, "dense-v1") for p in pairs[:2]], tokenizer.pad_token_id)
    ignore_digits = digit_weights(tokenizer, 0.0)
    digits = ignore_digits == 0
    assert {tokenizer.decode([int(i)]) for i in digits.nonzero()} == set("0123456789")
    labels = batch["labels"]
    words_only = dict(batch, labels=labels.masked_fill(digits[labels.clamp(min=0)], -100))
    with torch.no_grad():
        own = model(**batch).loss
        assert torch.isclose(weighted_loss(model, batch, digit_weights(tokenizer, 1.0)), own)
        assert torch.isclose(weighted_loss(model, batch, ignore_digits), model(**words_only).loss)


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


def test_encoded_batches_are_the_plan_in_order(student: tuple[Path, list]) -> None:
    """The batches a worker process encodes equal encoding each index list in the step, in the plan's order,
    and a consumer that stops early leaves no worker running."""
    import torch
    from transformers import AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    plan = [[0, 1], [2], [3, 4, 5], [1, 0]]
    batches = list(encoded_batches(processor, pairs, plan, "dense-v1", ahead=2))
    assert len(batches) == len(plan)
    for indices, batch in zip(plan, batches, strict=True):
        direct = collate(
            [encode_pair(processor, pairs[i], "dense-v1") for i in indices], processor.tokenizer.pad_token_id
        )
        assert batch.keys() == direct.keys()
        assert all(torch.equal(batch[k], direct[k]) for k in batch)
    long_plan = iter(plan * 100)
    stream = encoded_batches(processor, pairs, long_plan, "dense-v1", ahead=2)
    next(stream)
    assert len(multiprocessing.active_children()) == 1  # the encoding worker
    stream.close()  # shuts the worker down, and the plan is read no further
    assert multiprocessing.active_children() == []
    assert len(list(long_plan)) >= 400 - 4  # two ahead, and one more queued when the first was taken


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
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    table = getattr(model.model.visual, "pos_embed", None)
    if table is None:
        pytest.skip("Qwen2.5-VL's vision tower has no position table")
    saved = table.weight.detach().clone()
    example = encode_pair(AutoProcessor.from_pretrained(folder), pairs[0], "dense-v1")
    sincos_positions(model, example, _TABLE_RMS)
    assert abs(float(saved.pow(2).mean().sqrt()) - _TABLE_RMS) < 0.01
    assert torch.allclose(saved, table.weight, atol=_TABLE_RMS * 2**-7)


def test_probe_places_values_and_finds_positions_where_the_table_holds_them(
    student: tuple[Path, list],
) -> None:
    """probe-student scores each attribute at the first token of its value, and its linear probe reads the
    grid position from the tower's input exactly when the family adds a position table there."""
    import re

    from transformers import AutoProcessor

    from trainer.distill.probe import ATTRIBUTE_PATTERNS, probe_student, value_starts

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    item = encode_pair(processor, pairs[0], "dense-v1")
    starts = value_starts(processor.tokenizer, item, pairs[0].caption)
    assert {name for name, _ in starts} == set(ATTRIBUTE_PATTERNS)
    for name, index in starts:
        token = processor.tokenizer.decode([int(item["input_ids"][index])]).strip()
        words = [m.group(1) for m in re.finditer(ATTRIBUTE_PATTERNS[name], pairs[0].caption)]
        assert token and any(word.startswith(token) for word in words), (name, token, words)

    result = probe_student(folder, n=8)
    assert set(result.attributes) == set(ATTRIBUTE_PATTERNS)
    assert all(0 <= acc <= 1 for scores in result.attributes.values() for acc in scores.values())
    tower_in = result.positions["input"]
    if json.loads((folder / "config.json").read_text())["model_type"] == "qwen3_vl":
        assert tower_in["row"] == tower_in["col"] == 1.0  # the frozen sine-cosine table
    else:  # Qwen2.5-VL: rotary positions inside the tower, nothing added to the patch embedding
        assert tower_in["row"] < 0.6 and tower_in["col"] < 0.6
    assert result.contents and set(result.contents) <= {"shape", "size", "motion", "pattern", "camera"}
    for probe in result.contents.values():
        assert 0 <= probe["accuracy"] <= 1 and 0 <= probe["majority"] <= 1 and probe["tokens"] > 0


def test_content_probe_holds_out_whole_clips() -> None:
    """The token-contents probe scores on clips it never fitted: features that only name the clip (and a
    label fixed per clip) read perfectly when a clip's tokens fall on both sides, and not when held out
    whole; features that carry the label read perfectly either way."""
    from trainer.distill.probe import grouped_probe, ridge_accuracy

    rng = np.random.default_rng(0)
    clips = np.repeat(np.arange(40), 20)
    label = rng.integers(0, 3, 40)[clips]
    names_clip = np.eye(40)[clips] + 0.01 * rng.standard_normal((len(clips), 40))
    assert ridge_accuracy(names_clip, label) > 0.95  # tokens of one clip on both sides: it leaks
    accuracy, majority = grouped_probe(names_clip, label, clips)
    assert accuracy < 0.7 and 0 < majority < 0.7
    carries_label = np.c_[np.eye(3)[label], rng.standard_normal((len(clips), 5))]
    assert grouped_probe(carries_label, label, clips)[0] == 1.0


def test_grounding_targets_are_each_subjects_tokens_where_it_starts_and_ends(
    student: tuple[Path, list],
) -> None:
    """Every answer token inside a subject's JSON object is a query, and its targets are the cells the
    subject's box touches in the first frame pair (the cell of the start centre its caption names among them)
    and in the last (the cell of its centre in the last frame among them)."""
    from transformers import AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    for pair in pairs:
        item = encode_pair(processor, pair, "dense-v1", world_targets=True)
        queries, targets = item["grounding"]
        _, h, w = (int(v) // s for v, s in zip(item["video_grid_thw"][0], (1, 2, 2), strict=True))
        assert targets.shape == (len(queries), 2, h * w)
        subjects = StructuredCaption.model_validate_json(pair.caption).subjects
        for subject, target in ((subjects[0], targets[0]), (subjects[-1], targets[-1])):
            x, y = (float(v) for v in subject.position.split("(")[1].rstrip(")").split(","))
            assert target[0, int(y / 240 * h) * w + int(x / 320 * w)], subject.position
            assert region_of(x, y, 320, 240) == subject.position.split(",")[0]
        x0, y0, x1, y1 = pair.boxes[-1, -1]  # the last subject in the last frame, as fractions of the frame
        assert targets[-1, 1, int((y0 + y1) / 2 * h) * w + int((x0 + x1) / 2 * w)]
        described = processor.tokenizer.decode(item["input_ids"][queries + 1])
        subjects_json = ",".join(s.model_dump_json() for s in subjects)
        assert subjects_json[2:-1] in described and described in pair.caption  # whole tokens at the edges
        assert '"summary"' not in described and '"events"' not in described
    assert not {"grounding", "dense"} & set(encode_pair(processor, pairs[0], "dense-v1"))  # only when asked


def test_dense_targets_say_what_each_visual_token_shows(student: tuple[Path, list]) -> None:
    """One row per visual token: the token under each subject's start centre (first frame pair) reads
    that subject's shape x size word and motion as its caption states them, and is the one token of that
    pair that reads its shape x size in the centre column, its size in hundredths (within its size word's)
    and its centre's place in 48ths of the frame (within the token's cell); its heading lies in its motion
    word's sector; a token no object touches reads nothing there and the scene's pattern x camera; every
    token reads its own grid row and column."""
    import torch
    from transformers import AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    video = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    seen_scene = checked = 0
    for pair in pairs:
        item = encode_pair(processor, pair, "dense-v1", world_targets=True)
        dense = item["dense"]
        _, h, w = (int(v) // s for v, s in zip(item["video_grid_thw"][0], (1, 2, 2), strict=True))
        assert dense.shape == (int((item["input_ids"] == video).sum()), len(DENSE_READINGS))
        for k, n in enumerate(DENSE_CLASSES):
            assert ((dense[:, k] == -100) | ((dense[:, k] >= 0) & (dense[:, k] < n))).all()
        read = dict(zip(DENSE_READINGS, dense.T, strict=True))  # each reading's column
        frame_pairs = len(dense) // (h * w)
        rows, cols = np.indices((h, w))
        assert torch.equal(read["row"], torch.from_numpy(np.tile(rows.ravel(), frame_pairs)))  # raster order
        assert torch.equal(read["column"], torch.from_numpy(np.tile(cols.ravel(), frame_pairs)))
        (shot,) = read_caption(StructuredCaption.model_validate_json(pair.caption))
        for i, (obj, box) in enumerate(zip(shot.objects, pair.boxes, strict=True)):
            x0, y0, x1, y1 = box[:2].mean(axis=0)  # over the first frame pair
            row, col = int((y0 + y1) / 2 * h), int((x0 + x1) / 2 * w)
            cell = np.array([col / w, row / h, (col + 1) / w, (row + 1) / h])
            if any(_touches(other[:2].mean(axis=0), cell) for j, other in enumerate(pair.boxes) if j != i):
                continue  # another subject may cover more of this token
            token = {name: int(v[row * w + col]) for name, v in read.items()}
            assert token["object"] == 1 + SHAPES.index(obj.shape) * len(SIZES) + SIZES.index(obj.size)
            assert token["motion"] == MOTIONS.index(obj.motion)
            assert token["scene"] == -100
            assert token["centre"] == token["object"] - 1  # the token holds its centre
            if obj.motion == "still":
                assert token["heading"] == -100
            else:
                assert OCTANTS[token["heading"] // 4] == obj.motion  # the heading lies in the word's sector
            assert SIZES[int(np.searchsorted(np.array(SIZE_EDGES) * 100, token["extent"] + 0.5))] == obj.size
            x, y = token["x"], token["y"]  # the centre's 48ths of the frame lie in the token's cell
            assert x / PLACE_BINS < (col + 1) / w and col / w < (x + 1) / PLACE_BINS
            assert y / PLACE_BINS < (row + 1) / h and row / h < (y + 1) / PLACE_BINS
            readings = {k: int(v[row * w + col]) for k, v in split_dense_targets(dense.numpy()).items()}
            assert readings == {
                "shape": SHAPES.index(obj.shape), "size": SIZES.index(obj.size),
                "motion": MOTIONS.index(obj.motion), "pattern": -1, "camera": -1,
            }  # fmt: skip
            checked += 1
        empty = (read["object"] == 0).nonzero()[:, 0]
        scene = PATTERNS.index(shot.pattern) * len(CAMERAS) + CAMERAS.index(shot.camera)
        assert (read["scene"][empty] == scene).all() and (read["motion"][empty] == -100).all()
        centres = (read["centre"] != -100).reshape(-1, h * w).sum(1)  # per frame pair: one per object at most
        assert centres[0] >= 1 and (centres <= len(shot.objects)).all()
        seen_scene += len(empty)
    assert seen_scene > 0 and checked >= len(pairs)


def test_heading_bins_split_each_direction_word_in_four() -> None:
    """Sweeping the direction round the circle (y down on screen), the heading bin climbs by one every
    11.25 degrees, counterclockwise, and its quarter is always the direction word's sector; a velocity
    too slow to move has no heading."""
    bins = []
    for degrees in np.arange(0.25, 360.0, 0.5):  # clear of the sectors' edges, at 22.5 + 45k
        vx, vy = 40 * math.cos(math.radians(degrees)), -40 * math.sin(math.radians(degrees))
        bins.append(heading_bin(vx, vy))
        assert OCTANTS[bins[-1] // 4] == motion_of(vx, vy)
    assert sorted(set(bins)) == list(range(HEADING_BINS))
    assert (bins[0], bins[44], bins[45]) == (2, 3, 4)  # 0.25 degrees; either side of 22.5, an edge
    assert heading_bin(1.0, -1.0) == -100


def _touches(box: np.ndarray, cell: np.ndarray) -> bool:
    return bool(box[0] < cell[2] and cell[0] < box[2] and box[1] < cell[3] and cell[1] < box[3])


def test_the_dense_loss_teaches_the_tokens_to_say_what_they_show(student: tuple[Path, list]) -> None:
    """A few steps on the dense loss alone (the head and the model together) raise the head's accuracy
    on the visual tokens; the caption loss is the rest of the total."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    head = torch.nn.Linear(model.config.get_text_config().hidden_size, sum(DENSE_CLASSES))
    weights = digit_weights(processor.tokenizer, 1.0)
    batch = collate([encode_pair(processor, p, "dense-v1", True) for p in pairs[:4]], 0)
    config = DistillConfig(pairs="world", dense_weight=1.0)
    with torch.no_grad():
        total, caption, measured = world_loss(model, batch, weights, config, head)
        assert torch.equal(caption, weighted_loss(model, batch, weights))
    assert float(total - caption) > 0 and set(measured) == {*DENSE_READINGS, "shape"}
    before = sum(measured[k] for k in DENSE_READINGS) / len(DENSE_READINGS)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    mostly_dense = config.model_copy(update={"dense_weight": 50.0})
    for _ in range(15):
        loss, _, _ = world_loss(model, batch, weights, mostly_dense, head)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _, _, after = world_loss(model, batch, weights, config, head)
    assert sum(after[k] for k in DENSE_READINGS) / len(DENSE_READINGS) > before + 0.2


def test_the_grounding_loss_teaches_a_head_to_look_at_the_object(student: tuple[Path, list]) -> None:
    """A few steps on the grounding loss raise the attention the heads put on the described objects; the
    caption loss is the rest of the total."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, pairs = student
    processor = AutoProcessor.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(
        folder, dtype=torch.float32, attn_implementation=GROUNDING_ATTENTION
    )
    weights = digit_weights(processor.tokenizer, 1.0)
    batch = collate([encode_pair(processor, p, "dense-v1", True) for p in pairs[:4]], 0)
    config = DistillConfig(pairs="world", grounding_weight=1.0, grounding_layer=1)
    with torch.no_grad():
        total, caption, measured = world_loss(model, batch, weights, config)
        assert torch.equal(caption, weighted_loss(model, batch, weights))
    before = measured["attention"]
    assert float(total - caption) >= -math.log(before) - 1e-4  # the mean of -log(mass) is at least this
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    mostly_grounding = config.model_copy(update={"grounding_weight": 50.0})
    for _ in range(10):
        loss, _, _ = world_loss(model, batch, weights, mostly_grounding)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _, _, after = world_loss(model, batch, weights, config)
    assert after["attention"] > 2 * before


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
