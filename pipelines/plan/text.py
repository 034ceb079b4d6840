"""The text stage of ``dataengine plan``: the recipe's text encoder at its real architecture (the real weights
where they ship in a package, as all-MiniLM-L6-v2 does; else random from a published configuration), one
caption of ``max_tokens`` tokens through it on this CPU in float32.

The DiT reads "text tokens" (states per caption: max_tokens, 1 for a pooled vector) and "text dim" (parse
them with ``fact_shape``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dataengine.config import ConfigError
from dataengine.encode.text import BUILTIN_MINILM, TextEmbedConfig, resolve_text_model
from dataengine.plan import BudgetError, Meter, StagePlan, human_bytes, human_count, measure_isolated
from pipelines.plan.encode import (
    COUNTED,
    DTYPE_BYTES,
    HERE,
    Published,
    npy_bytes,
    on_meta,
    shape_str,
)
from pipelines.recipes import RecipeConfig

T5_V1_1_LARGE = "google/t5-v1_1-large"

PUBLISHED_TEXT: dict[str, Published] = {
    T5_V1_1_LARGE: Published(
        {
            "model_type": "t5", "d_model": 1024, "d_kv": 64, "d_ff": 2816, "num_layers": 24,
            "num_decoder_layers": 24, "num_heads": 16, "feed_forward_proj": "gated-gelu",
            "vocab_size": 32128, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False, "is_encoder_decoder": True,
            "torch_dtype": "float32",
        },
        f"huggingface.co/{T5_V1_1_LARGE}/config.json",
    ),
}  # fmt: skip


def text_architecture(config: TextEmbedConfig) -> tuple[Any, str | None, str]:
    """The text encoder's transformers configuration, the local folder holding its real weights (None: a
    published table, built with random weights), and where the configuration was read.

    Raises:
        ConfigError: a hub id with no published table here (hub files cannot be read).
    """
    from transformers import AutoConfig

    published = PUBLISHED_TEXT.get(config.model)
    if published is not None:
        values = dict(published.config)
        return AutoConfig.for_model(values.pop("model_type"), **values), None, published.source
    path = resolve_text_model(config.model)
    if not (Path(path) / "config.json").is_file():
        known = ", ".join(PUBLISHED_TEXT)
        raise ConfigError(
            f"text.model={config.model!r}: no local config.json and no published configuration known here "
            f"(known: {known}, {BUILTIN_MINILM}); give a local folder or add its values to PUBLISHED"
        )
    return AutoConfig.from_pretrained(path), path, f"{config.model} -> {path}/config.json"


def plan_text(recipe: RecipeConfig) -> StagePlan:
    """The text stage: ``max_tokens`` tokens through the encoder here (float32, CPU; the real weights where
    they ship in a package, else random), the per-caption output shape the DiT receives, parameters, peak
    memory here and on the GPU, FLOPs and bytes per clip. A recipe with ``text=None`` stores no text
    embeddings: its plan has no model, 0 params and "text tokens" 0.

    Raises:
        BudgetError: ``text.max_tokens`` beyond an absolute-position encoder's positions.
    """
    config = recipe.text
    if config is None:
        plan = StagePlan(
            "text", "none (text=None)", 0, bytes_out_per_clip=0, notes=["no text_emb.npy is stored"]
        )
        plan.fact("text tokens", 0, "text=None")
        plan.fact("text dim", 0, "text=None")
        return plan
    arch, path, source = text_architecture(config)
    meta = on_meta(lambda: encoder_from_config(arch))
    dim = int(getattr(arch, "d_model", None) or arch.hidden_size)
    positions: int | None = getattr(arch, "max_position_embeddings", None)
    absolute = getattr(arch, "position_embedding_type", "absolute") == "absolute"
    notes: list[str] = []
    out_shape: tuple[int, ...]
    if config.kind == "tokens":
        tokens, out_shape = config.max_tokens, (config.max_tokens, dim)
        if positions is not None and absolute and tokens > positions:
            raise BudgetError(
                "text", "text.max_tokens", f"{tokens} tokens, but {config.model} has {positions} positions",
                f"text.max_tokens={positions}",
            )  # fmt: skip
        stored = npy_bytes(out_shape, 2) + npy_bytes((tokens,), 1)
        what = f"text_emb.npy float16 {tokens}x{dim} + text_mask.npy bool {tokens}"
    else:  # sentence-transformers: cut at its max_seq_length, mean-pooled to one vector
        tokens = _sentence_max_tokens(path) or int(positions or 512)
        out_shape, stored = (dim,), npy_bytes((dim,), 2)
        what = f"text_emb.npy float16 {dim} (pooled)"
        notes.append(f"sentence kind: captions are cut at {tokens} tokens and pooled to one vector")
    params = sum(p.numel() for p in meta.parameters())
    embedding = meta.get_input_embeddings().weight.numel()
    flops = _count_text(meta, tokens)
    measured, _ = measure_isolated(_text_worker, path, arch, tokens)
    weights = "real weights (" + path + ")" if path else "random weights"
    plan = StagePlan(
        "text", f"{type(meta).__name__} ({human_count(params)} params; {config.model})", params,
        peak_bytes_here=measured["peak"], flops_per_clip=flops, bytes_out_per_clip=stored, notes=notes,
    )  # fmt: skip
    n_tokens = out_shape[0] if config.kind == "tokens" else 1
    kind = "max_tokens states (padded or cut)" if config.kind == "tokens" else "one pooled vector"
    body = params - embedding
    for name, value, said in [
        ("architecture", f"{type(meta).__name__}: {_describe(arch)}", source),
        ("text tokens", n_tokens, f"text.kind={config.kind}: {kind}"),
        ("text dim", dim, source),
        ("text shape", shape_str(out_shape), "what the DiT's cross-attention receives per caption"),
        ("tokens run", tokens, f"{HERE}: random ids, {weights}"),
        ("output shape measured", shape_str(tuple(measured["shape"])), f"{HERE} (float32, CPU)"),
        ("time here", f"{measured['seconds']:.2f} s", f"{HERE}: one caption"),
        ("peak here", human_bytes(measured["peak"]), f"{HERE}: RSS over the imports"),
        ("model resident here", human_bytes(measured["resident"]), f"{HERE}: RSS of the built model"),
        ("forward peak here", human_bytes(measured["run"]), f"{HERE}: what one caption added to it"),
        ("FLOPs per clip", human_count(flops), f"{COUNTED} (matmuls, attention included)"),
        (
            "FLOPs, 2 x N x tokens",
            human_count(2 * body * tokens),
            f"formula: N = {human_count(body)} w/o embeddings",
        ),
        ("stored per clip", f"{what} = {human_bytes(stored)}", "dataengine.encode.text: float16, npy header"),
    ]:
        plan.fact(name, value, said)
    if config.device.startswith("cuda"):
        dtype = str(getattr(arch, "dtype", None) or "float32").removeprefix("torch.")
        size = DTYPE_BYTES.get(dtype, 4)
        activations = measured["run"] * size / 4 * config.batch_size
        plan.gpu_bytes = round(params * size + activations)
        how = f"weights at {dtype} (the checkpoint's: load_encoder names none) + forward peak"
        plan.fact(
            "GPU memory",
            human_bytes(plan.gpu_bytes),
            f"estimate: {how} x {size}/4 x batch {config.batch_size}",
        )
    else:
        plan.notes.append(f"text.device={config.device}: no GPU estimate")
    return plan


def encoder_from_config(config: Any) -> Any:
    """The model ``load_encoder`` would load for ``config``, built from it (random weights): an
    encoder-decoder's ``*EncoderModel`` (T5EncoderModel), else the base model. ``config`` is left as it was
    (T5EncoderModel sets ``is_encoder_decoder=False`` on the config it is given)."""
    import copy

    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    config = copy.deepcopy(config)
    names = [n for n in getattr(config, "architectures", None) or [] if n.endswith("EncoderModel")]
    if getattr(config, "is_encoder_decoder", False) and config.model_type in MODEL_MAPPING_NAMES:
        names.append(str(MODEL_MAPPING_NAMES[config.model_type]).removesuffix("Model") + "EncoderModel")
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls(config)
    model = transformers.AutoModel.from_config(config)
    return model.get_encoder() if getattr(config, "is_encoder_decoder", False) else model


def _text_worker(path: str | None, arch: Any, tokens: int) -> dict[str, Any]:
    """In a spawned process: the encoder (real weights from ``path``, else random from ``arch``) on one
    caption of ``tokens`` random ids, float32 on the CPU; the time and the ``Meter``'s numbers."""
    import torch

    from dataengine.encode.text import load_encoder

    torch.manual_seed(0)
    on_meta(lambda: encoder_from_config(arch))  # every lazy import done before the baseline
    meter = Meter()
    model = (load_encoder(path) if path else encoder_from_config(arch)).float().eval()
    for param in model.parameters():  # weights mapped from a file count only once touched: copy them in
        param.data = param.data.clone()
    meter.built()
    ids = torch.randint(0, int(arch.vocab_size), (1, tokens))
    start = time.perf_counter()
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    seconds = time.perf_counter() - start
    return {"shape": list(hidden.shape[1:]), "seconds": seconds, **meter.done()}


def _count_text(meta: Any, tokens: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        meta(input_ids=ids)  # no mask: all tokens attend (a mask's all-ones check would read a meta value)
    return float(counter.get_total_flops())


def _sentence_max_tokens(path: str | None) -> int | None:
    file = Path(path or "") / "sentence_bert_config.json"
    return int(json.loads(file.read_text())["max_seq_length"]) if path and file.is_file() else None


def _describe(config: Any) -> str:
    keys = ("num_layers", "num_hidden_layers", "d_model", "hidden_size", "d_ff", "intermediate_size",
            "num_heads", "num_attention_heads", "feed_forward_proj", "vocab_size")  # fmt: skip
    return ", ".join(f"{k} {getattr(config, k)}" for k in keys if getattr(config, k, None) is not None)
