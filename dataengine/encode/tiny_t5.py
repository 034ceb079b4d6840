"""Tiny, randomly initialised T5 text encoders built offline: real transformers classes, meaningless states.

A folder ``AutoTokenizer`` and ``T5EncoderModel`` load with no hub: a Unigram tokenizer trained here on the
built-in caption prose and wrapped as ``T5Tokenizer`` (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then the trained
pieces, then 100 ``<extra_id_*>`` sentinels; ``</s>`` ends every sequence), and a T5 v1.1-style model
(gated-GELU) with ``d_model`` 32, 2 layers, 2 heads, float32 safetensors.

Two architectures, as users point at either: ``full`` is ``T5ForConditionalGeneration`` (encoder and
decoder), ``encoder`` is ``T5EncoderModel``. Both come from one seeded full model, so their encoders carry
the same weights. ``ensure_tiny_t5`` keeps one folder per architecture in the on-disk model cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from dataengine import model_cache
from dataengine.model_cache import build_folder, cache_key, cached_folder

T5Arch = Literal["full", "encoder"]

_BUILDER_VERSION = "1"  # part of the cache key: bump it when what a build writes changes
_PIECES = 320  # trained vocabulary, the three specials included (the built-in prose trains at most ~335)
_CONFIG: dict[str, Any] = {
    "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2,
    "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32, "dropout_rate": 0.0,
    "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}  # fmt: skip


def ensure_tiny_t5(arch: T5Arch = "full", cache_root: Path | None = None, seed: int = 0) -> Path:
    """The cached tiny T5 of ``arch``, built only when missing; concurrent callers share one build.

    Returns:
        ``<cache_root>/tiny-t5-<arch>-<first 12 hex digits of the recipe's hash>/``, complete.
    """
    import tokenizers
    import transformers

    recipe = json.dumps(
        [_BUILDER_VERSION, transformers.__version__, tokenizers.__version__, arch, seed, _CONFIG]
    )
    target = model_cache.cache_root(cache_root) / f"tiny-t5-{arch}-{cache_key(recipe)}"
    return cached_folder(target, lambda out: build_tiny_t5(out, arch, seed))


def build_tiny_t5(out_dir: Path, arch: T5Arch = "full", seed: int = 0) -> Path:
    """Build ``arch`` into ``out_dir`` atomically: in a temporary sibling folder, then one rename.

    Raises:
        FileExistsError: ``out_dir`` has content, before the build or (another process) by its end.
    """
    return build_folder(out_dir, lambda tmp: _write(tmp, arch, seed))


def _write(out: Path, arch: T5Arch, seed: int) -> None:
    import torch
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    tokenizer = _tokenizer()
    config = T5Config(vocab_size=len(tokenizer), **_CONFIG)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
        torch.manual_seed(seed)
        model: Any = T5ForConditionalGeneration(config).eval()
    if arch == "encoder":  # the same encoder weights, without the decoder
        encoder = T5EncoderModel(config).eval()
        missing = encoder.load_state_dict(model.state_dict(), strict=False).missing_keys
        if missing:
            raise RuntimeError(f"T5EncoderModel weights not in T5ForConditionalGeneration: {missing}")
        model = encoder
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.trainers import UnigramTrainer
    from transformers import T5Tokenizer

    from dataengine.caption.tiny_vlm import CAPTION_PROSE  # the project's built-in caption text, ~500 words

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Sequence(  # what T5Tokenizer rebuilds around the pieces
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(prepend_scheme="always", split=True)]
    )
    specials = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2, as T5 expects
    trainer = UnigramTrainer(
        vocab_size=_PIECES, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    unigram.train_from_iterator(CAPTION_PROSE.splitlines(), trainer)
    trained = json.loads(unigram.to_str())["model"]["vocab"]
    if len(trained) != _PIECES or [p for p, _ in trained[:3]] != specials:
        raise ValueError(f"the built-in prose trained {len(trained)} pieces, not {_PIECES} after {specials}")
    return T5Tokenizer(
        vocab=[*((p, 0.0) for p in specials), *_canonical(trained[3:])], extra_ids=100, model_max_length=512
    )


def _canonical(pieces: list[list[Any]]) -> list[tuple[str, float]]:
    """The trained pieces, made the same on every run: the trainer sums in parallel (last-bit noise) and
    gives the characters it had to keep the scores ``min + k * 1e-4`` in hash-set order; those characters
    get the same scores here, in sorted order."""
    rounded = [(str(piece), round(float(score), 6)) for piece, score in pieces]
    floor = min(score for _, score in rounded)
    kept = [(p, s) for p, s in rounded if len(p) == 1 and s < floor + 0.01]
    fixed = dict(zip(sorted(p for p, _ in kept), sorted((s for _, s in kept), reverse=True), strict=True))
    return sorted(((p, fixed.get(p, s)) for p, s in rounded), key=lambda ps: (-ps[1], ps[0]))
