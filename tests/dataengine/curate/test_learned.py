"""Learned scorers on a tiny random CLIP built from a config, saved to a folder and loaded by the real code:
an aesthetic head trained here to prefer bright pictures, and the caption-to-clip cosine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataengine.config import ConfigError
from dataengine.curate.learned import (
    HEAD_FILE,
    AestheticConfig,
    AestheticScorer,
    CaptionMatchConfig,
    CaptionMatcher,
    build_head,
    load_head,
    save_head,
)
from dataengine.model_cache import ModelUnavailableError
from tests.dataengine.curate.test_embed import save_tiny_clip, scene


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def pictures(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """``n`` random textured 40x48 RGB pictures with values in [low, high)."""
    blocks = rng.integers(low, high, (n, 5, 6, 3), dtype=np.uint8)
    return blocks.repeat(8, axis=1).repeat(8, axis=2)


def tower_features(clip_dir: Path, images: np.ndarray) -> np.ndarray:
    """The tiny tower's L2-normalised image embeddings, computed with transformers directly."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=list(images), return_tensors="pt")
    with torch.no_grad():
        emb = model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
    return torch.nn.functional.normalize(emb, dim=-1).numpy()


@pytest.fixture(scope="module")
def bright_head(clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A head trained on the tower's features to score bright pictures 1 and dark ones 0."""
    import torch

    rng = np.random.default_rng(0)
    images = np.concatenate([pictures(rng, 48, 150, 256), pictures(rng, 48, 0, 100)])
    x = torch.from_numpy(tower_features(clip_dir, images))
    y = torch.cat([torch.ones(48), torch.zeros(48)])[:, None]
    torch.manual_seed(0)
    head = build_head([16, 32, 8, 1])
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(200):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(head(x), y)
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.05
    return save_head(tmp_path_factory.mktemp("head"), head.state_dict()).parent


def test_a_trained_head_ranks_bright_clips_above_dark_ones(clip_dir: Path, bright_head: Path) -> None:
    scorer = AestheticScorer(AestheticConfig(model=str(clip_dir), head=str(bright_head), min_score=0.5))
    scorer.setup()
    rng = np.random.default_rng(1)  # pictures the head never saw
    bright, dark = pictures(rng, 6, 160, 256), pictures(rng, 6, 0, 90)
    dim = np.concatenate([pictures(rng, 3, 0, 90), pictures(rng, 3, 160, 256)])  # half the frames bright
    high, low, middle = scorer.score([bright, dark, dim])
    assert high > middle > low, (high, middle, low)
    assert high > 0.5 > low and scorer.keep(high) and not scorer.keep(low)


def test_a_score_is_the_head_on_the_towers_frame_embeddings_averaged(
    clip_dir: Path, bright_head: Path
) -> None:
    import torch

    clips = [scene(t=7), scene(sky=(200, 120, 60), t=2, h=50, w=70)]
    scorer = AestheticScorer(
        AestheticConfig(model=str(clip_dir), head=str(bright_head / HEAD_FILE), frames=3)
    )
    scorer.setup()
    got = scorer.score(clips)
    head = load_head(bright_head)
    with torch.no_grad():
        first = head(torch.from_numpy(tower_features(clip_dir, clips[0][[0, 3, 6]]))).mean()
        second = head(torch.from_numpy(tower_features(clip_dir, clips[1]))).mean()
    np.testing.assert_allclose(got, [float(first), float(second)], atol=1e-5)


def test_a_laion_keyed_head_converts_and_scores_the_same(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    laion = torch.nn.Sequential(  # LAION's layout: Dropouts between the linear layers, keyed layers.<i>
        torch.nn.Linear(16, 12), torch.nn.Dropout(0.2), torch.nn.Linear(12, 4), torch.nn.Dropout(0.1),
        torch.nn.Linear(4, 1),
    )  # fmt: skip
    state = {f"layers.{key}": value for key, value in laion.state_dict().items()}
    head = load_head(save_head(tmp_path / "laion.safetensors", state))
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(head(x), laion.eval()(x))


def test_heads_that_do_not_fit_are_config_errors(clip_dir: Path, tmp_path: Path) -> None:
    import torch

    with pytest.raises(ConfigError, match="end in 1"):
        build_head([16, 4])
    with pytest.raises(ConfigError, match="chain"):
        save_head(tmp_path / "bad", {**build_head([16, 4, 1]).state_dict(), "1.weight": torch.zeros(1, 5)})
    save_head(tmp_path / "wide", build_head([32, 1]).state_dict())
    scorer = AestheticScorer(AestheticConfig(model=str(clip_dir), head=str(tmp_path / "wide")))
    with pytest.raises(ConfigError, match="takes 32-d input"):
        scorer.setup()


def test_a_missing_head_or_tower_is_a_model_unavailable_error(clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=r"filters\.aesthetic\.head"):
        AestheticScorer(AestheticConfig(model=str(clip_dir), head=str(tmp_path))).setup()
    with pytest.raises(ModelUnavailableError, match=r"filters\.aesthetic\.model"):
        AestheticScorer(AestheticConfig(model=str(tmp_path / "none"), head=str(tmp_path))).setup()
    with pytest.raises(ModelUnavailableError, match=r"filters\.caption_match\.model"):
        CaptionMatcher(CaptionMatchConfig(model=str(tmp_path / "none"))).setup()


# --------------------------------------------------------------------------------------------- caption match


def manual_match(clip_dir: Path, frames_NHWC: np.ndarray, caption: str) -> float:
    import torch
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    image = torch.from_numpy(tower_features(clip_dir, frames_NHWC)).mean(0)
    tokens = AutoTokenizer.from_pretrained(clip_dir)([caption], return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(**tokens).pooler_output[0]
    return float(torch.nn.functional.cosine_similarity(image, text, dim=0))


def test_caption_match_is_the_cosine_of_the_models_own_image_and_text_features(clip_dir: Path) -> None:
    matcher = CaptionMatcher(CaptionMatchConfig(model=str(clip_dir), frames=2, batch_size=2))
    matcher.setup()
    clips = [scene(t=5), scene(sky=(200, 120, 60)), scene(t=1, h=60, w=60)]
    captions = ["a yellow ball rolls over a field", "dusk over red hills", "a ball"]
    scores = matcher.score(clips, captions)
    assert all(-1 <= s <= 1 for s in scores) and len(set(scores)) == 3
    expected = [
        manual_match(clip_dir, c[[0, len(c) - 1]], text) for c, text in zip(clips, captions, strict=True)
    ]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_captions_past_77_tokens_are_truncated(clip_dir: Path) -> None:
    matcher = CaptionMatcher(CaptionMatchConfig(model=str(clip_dir)))
    matcher.setup()
    head = "a ball " * 15  # 75 tokens: one per letter, start and end of text make 77
    scores = matcher.score([scene()] * 3, [head, head + "rolls away over the hills", head[:-8]])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6) and scores[0] != pytest.approx(scores[2], abs=1e-4)
    with pytest.raises(ValueError, match="2 captions"):
        matcher.score([scene()], ["one", "two"])


def test_the_learned_stage_scores_embeds_and_drops_below_the_aesthetic_floor(
    clip_dir: Path, bright_head: Path
) -> None:
    """LearnedStage (the caption worker's towers): aesthetic score and tower embedding on clips the model-free
    stage passed; a clip below ``filters.aesthetic.min_score`` becomes a ``dropped`` filter row."""
    from dataengine.curate.embed import EmbedConfig
    from dataengine.curate.filters import FiltersConfig
    from dataengine.records import Clip, Curation, DecodedClip, Frames, ProbeInfo
    from dataengine.stages.filter import LearnedStage

    probe = ProbeInfo(duration_s=4, avg_fps=2, r_fps=2, n_frames=8, n_frames_exact=True, width=48, height=40,
                      rotation=0, codec="h264", pix_fmt="yuv420p", bit_depth=8, is_vfr=False, has_audio=False,
                      container="mp4", size_bytes=1)  # fmt: skip
    rng = np.random.default_rng(1)
    decoded = []
    for i, (low, high) in enumerate(((150, 256), (0, 100))):
        clip = Clip(clip_id=f"{i:032x}", video_id="0" * 32, uri=f"file:///{i}.mp4", path=f"/{i}.mp4", index=0,
                    start_s=0, end_s=4, shot=0, probe=probe)  # fmt: skip
        frames = Frames(pictures(rng, 4, low, high), 2.0, np.arange(4) / 2.0)
        decoded.append(DecodedClip(clip, {"caption": frames}, Curation({"motion": 0.1})))
    config = FiltersConfig(
        embed=EmbedConfig(kind="clip", model=str(clip_dir)),
        aesthetic=AestheticConfig(model=str(clip_dir), head=str(bright_head), min_score=0.5),
    )
    assert config.learned and not FiltersConfig().learned  # the default embeds with the descriptor
    with LearnedStage(config) as stage:
        bright, dark = stage.process_batch(decoded)
    assert isinstance(bright, DecodedClip) and bright.curation is not None
    assert bright.curation.scores["motion"] == 0.1 and bright.curation.scores["aesthetic"] > 0.5
    assert bright.curation.embedding is not None and bright.curation.embedding.shape == (16,)
    assert not isinstance(dark, DecodedClip) and dark.kind == "dropped" and dark.stage == "filter"
    assert dark.reason.startswith("aesthetic ") and "(filters.aesthetic.min_score)" in dark.reason
    assert dark.scores["motion"] == 0.1 and dark.scores["aesthetic"] < 0.5
