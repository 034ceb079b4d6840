"""Clip embeddings: the model-free descriptor on synthetic scenes (re-encoded with ffmpeg), and the CLIP and
SigLIP towers built tiny from configs, saved to a folder and loaded by the real code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from dataengine.config import ConfigError
from dataengine.curate.embed import DESCRIPTOR_DIM, ClipEmbedder, EmbedConfig, describe
from dataengine.model_cache import ModelUnavailableError
from tests.curation_cases import decode_span

# --------------------------------------------------------------------------------------------- test clips


def scene(
    sky: tuple[int, int, int] = (40, 90, 170),
    ground: tuple[int, int, int] = (70, 120, 40),
    ball: tuple[int, int, int] = (230, 200, 40),
    t: int = 8,
    h: int = 112,
    w: int = 150,
) -> np.ndarray:
    """``frames_THWC``: sky over striped ground with a ball moving left to right."""
    yy, xx = np.mgrid[:h, :w]
    base = np.where((yy < h * 0.55)[..., None], np.array(sky), np.array(ground)).astype(np.float32)
    base += ((yy[..., None] / h) * 40) + np.where((xx // 6 % 2 == 0) & (yy > h * 0.55), 25, 0)[..., None]
    frames_THWC = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        frame = base.copy()
        inside = (xx - w * (0.15 + 0.7 * i / t)) ** 2 + (yy - h * 0.35) ** 2 < (h * 0.15) ** 2
        frame[inside] = ball
        frames_THWC[i] = np.clip(frame, 0, 255)
    return frames_THWC


def reencode(frames_THWC: np.ndarray, width: int, height: int, crf: int = 30) -> np.ndarray:
    """The clip through x264 (lossy, yuv420p) and back, decoded at another size by ffmpeg's scaler."""
    _, h, w, _ = frames_THWC.shape
    encode = ["ffmpeg", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
              "-r", "2", "-i", "-", "-c:v", "libx264", "-crf", str(crf), "-pix_fmt", "yuv420p",
              "-f", "matroska", "-"]  # fmt: skip
    mkv = subprocess.run(encode, input=frames_THWC.tobytes(), capture_output=True, check=True).stdout
    decode = ["ffmpeg", "-loglevel", "error", "-i", "-", "-vf", f"scale={width}:{height}",
              "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]  # fmt: skip
    raw = subprocess.run(decode, input=mkv, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


# ---------------------------------------------------------------------------------------------- descriptor


def test_descriptor_is_a_deterministic_unit_vector_of_fixed_size() -> None:
    embedder = ClipEmbedder(EmbedConfig())
    embedder.setup()
    clips = [scene(), scene(t=1, h=37, w=91), np.zeros((3, 64, 64, 3), np.uint8)]
    first, again = embedder.embed(clips), embedder.embed(clips)
    assert embedder.dim == DESCRIPTOR_DIM == 256
    for v, w in zip(first, again, strict=True):
        assert v.shape == (256,) and v.dtype == np.float32
        assert np.isfinite(v).all() and abs(float(np.linalg.norm(v)) - 1) < 1e-5
        np.testing.assert_array_equal(v, w)


def test_a_re_encoded_rescaled_copy_embeds_close_and_other_scenes_far() -> None:
    original = scene()
    copy = reencode(original, 224, 168)  # x264 at crf 30, then twice the size
    small = reencode(original, 76, 56)
    upside_down = original[:, ::-1]  # same colours, other layout
    other = scene(sky=(200, 120, 60), ground=(150, 40, 40), ball=(30, 30, 200))
    v = describe(original)
    sims = {name: float(v @ describe(c)) for name, c in
            {"copy": copy, "small": small, "upside_down": upside_down, "other": other}.items()}  # fmt: skip
    assert sims["copy"] > 0.95 and sims["small"] > 0.95, sims
    assert sims["other"] < 0.6, sims
    assert sims["upside_down"] < sims["small"] - 0.1 and sims["upside_down"] > sims["other"] + 0.1, sims


@pytest.fixture(scope="module")
def case_embeddings(curation_cases: dict[str, Path]) -> dict[str, np.ndarray]:
    """case -> descriptor of its caption view (2 fps, 8 frames, short side 112) from the decode stage."""
    return {
        name: describe(decode_span(path).views["caption"].frames_THWC)
        for name, path in curation_cases.items()
    }


def test_curation_cases_copies_embed_close_other_footage_far(case_embeddings: dict[str, np.ndarray]) -> None:
    moving = case_embeddings["moving"]
    sims = {name: float(moving @ v) for name, v in case_embeddings.items()}
    assert sims["reencoded"] > 0.95 and sims["cropped"] > 0.95, sims  # 0.75x at 60 kbit/s; centre 90%
    assert sims["different"] < 0.9 and sims["different"] < min(sims["reencoded"], sims["cropped"]) - 0.15, (
        sims
    )
    assert sims["black"] < 0.2, sims


def test_descriptor_pools_the_configured_frames_evenly_spaced() -> None:
    clip = np.concatenate([scene(t=4), scene(sky=(200, 120, 60), t=4)])  # two halves, two looks
    np.testing.assert_array_equal(describe(clip, frames=1), describe(clip[:1]))
    np.testing.assert_array_equal(describe(clip, frames=2), describe(clip[[0, 7]]))
    late = describe(clip[4:])
    assert describe(clip, frames=8) @ late > describe(clip, frames=1) @ late + 0.05


def test_frames_that_are_not_uint8_rgb_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        describe(scene().astype(np.float32))
    with pytest.raises(ValueError, match="no frames"):
        describe(np.zeros((0, 8, 8, 3), np.uint8))


def test_config_is_strict_and_towers_need_a_model() -> None:
    with pytest.raises(ValidationError, match="needs model"):
        EmbedConfig(kind="siglip")
    with pytest.raises(ValidationError):
        EmbedConfig(kind="descriptor", frame=4)  # type: ignore[call-arg]


# --------------------------------------------------------------------------------------------------- towers


def save_tiny_clip(folder: Path, image_size: int = 32) -> Path:
    """A random CLIP (text and image towers, hidden 32, 2 layers, patch 8, projection 16) with its image
    processor and a character-level CLIP tokenizer (the 256 byte-level symbols, no merges), saved to
    ``folder`` as a hub checkpoint would be."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    names = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    tokenizer = CLIPTokenizer(vocab={name: i for i, name in enumerate(names)}, merges=[])
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {**tower, "vocab_size": len(names), "max_position_embeddings": 77, "bos_token_id": 0,
            "eos_token_id": 1, "pad_token_id": 1}  # fmt: skip
    config = CLIPConfig(
        text_config=text,
        vision_config={**tower, "image_size": image_size, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    crop = {"height": image_size, "width": image_size}
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=crop).save_pretrained(folder)
    return folder


def save_tiny_siglip(folder: Path) -> Path:
    """A random SigLIP image tower (hidden 32, 2 layers, 32 px, patch 8) and its image processor."""
    import torch
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    SiglipVisionModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("towers")
    return {"clip": save_tiny_clip(root / "clip"), "siglip": save_tiny_siglip(root / "siglip")}


def varied_clips() -> list[np.ndarray]:
    return [scene(), scene(sky=(200, 120, 60), t=3, h=60, w=80), scene(t=1), reencode(scene(), 96, 72),
            scene(ball=(10, 10, 10), t=6, h=90, w=60)]  # fmt: skip


@pytest.mark.parametrize(("kind", "dim"), [("clip", 16), ("siglip", 32)])
def test_a_tower_gives_unit_vectors_and_batches_like_one_by_one(
    towers: dict[str, Path], kind: str, dim: int
) -> None:
    batched = ClipEmbedder(EmbedConfig(kind=kind, model=str(towers[kind]), batch_size=3))
    single = ClipEmbedder(EmbedConfig(kind=kind, model=str(towers[kind]), batch_size=1))
    batched.setup()
    single.setup()
    clips = varied_clips()
    together = batched.embed(clips)
    assert batched.dim == dim and len(together) == len(clips)
    for v, w in zip(together, single.embed(clips), strict=True):
        assert v.shape == (dim,) and v.dtype == np.float32
        assert abs(float(np.linalg.norm(v)) - 1) < 1e-5
        np.testing.assert_allclose(v, w, atol=1e-5)
    assert float(together[0] @ together[1]) < 0.9999  # different clips, different vectors


def test_clip_kind_is_the_mean_of_the_image_towers_normalised_frame_embeddings(
    towers: dict[str, Path],
) -> None:
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    clip = scene(t=7)
    embedder = ClipEmbedder(EmbedConfig(kind="clip", model=str(towers["clip"]), frames=3))
    embedder.setup()
    (got,) = embedder.embed([clip])
    model = CLIPModel.from_pretrained(towers["clip"]).eval()
    pixels = CLIPImageProcessor.from_pretrained(towers["clip"])(
        images=list(clip[[0, 3, 6]]), return_tensors="pt"
    )
    with torch.no_grad():
        frames = model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
    mean = torch.nn.functional.normalize(frames, dim=-1).mean(0)
    np.testing.assert_allclose(got, (mean / mean.norm()).numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_missing_model_is_a_model_unavailable_error(tmp_path: Path, kind: str) -> None:
    config = EmbedConfig(kind=kind, model=str(tmp_path / "nowhere"))
    embedder = ClipEmbedder(config, key="filters.embed.model")
    with pytest.raises(ModelUnavailableError, match=r"filters\.embed\.model"):
        embedder.setup()
    with pytest.raises(RuntimeError, match="setup"):
        embedder.embed([scene()])


def test_a_checkpoint_that_is_not_the_tower_is_a_config_error(
    towers: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    with pytest.raises(ConfigError, match="not a siglip image tower"):
        ClipEmbedder(EmbedConfig(kind="siglip", model=str(towers["clip"]))).setup()
    no_projection = (
        tmp_path / "no-projection"
    )  # a CLIP image tower without the projection to the shared space
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    CLIPVisionModel(config).save_pretrained(no_projection)
    CLIPImageProcessor().save_pretrained(no_projection)
    with pytest.raises(ConfigError, match="missing or misshapen"):
        ClipEmbedder(EmbedConfig(kind="clip", model=str(no_projection))).setup()
