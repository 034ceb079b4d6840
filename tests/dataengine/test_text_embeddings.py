"""Caption text embeddings with the real all-MiniLM-L6-v2 model shipped in its PyPI wheel."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from dataengine.config import ConfigError
from dataengine.encode.text import TextEmbedConfig, TextEmbedder, resolve_text_model

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
    with pytest.raises(ConfigError, match="known: builtin:all-minilm-l6-v2"):
        resolve_text_model("builtin:nope")
    with pytest.raises(ValidationError):
        TextEmbedConfig(kind="pooled")  # type: ignore[arg-type]
