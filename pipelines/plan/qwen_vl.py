"""Qwen-VL caption models for the plan: their published configurations, the processors' token arithmetic,
prompt token counts, and one window run through a model built from configuration with random weights.

The arithmetic follows the installed transformers' Qwen2-VL / Qwen3-VL video processors (``smart_resize``,
patches of ``patch`` pixels, ``merge`` x ``merge`` patches a token, ``temporal`` frames a patch), which
vLLM calls for every request (its prompt replacement is grid_t x grid_h x grid_w / merge^2 tokens).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dataengine.caption.models import BUILTIN, resolve_model
from dataengine.config import ConfigError

QWEN_SPLIT = (  # the Qwen2 tokenizer's pre-tokenizer regex (as dataengine.caption.tiny_vlm builds it)
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

# config.json of the released checkpoints on the Hugging Face hub, the keys that shape the model (not
# transformers' Qwen2_5_VLConfig() defaults: those are the 72B sizes). Video pixel limits: a hub folder
# with no video_preprocessor_config.json gets its video processor from preprocessor_config.json
# (transformers' AutoVideoProcessor fallback: min_pixels 3136, max_pixels 12845056); without it the
# Qwen2VLVideoProcessor class defaults (128 and 768 tokens' worth of 28 x 28 pixels) would apply.
QWEN2_VL_VIDEO_LIMITS = ((3136, 12845056), (128 * 28 * 28, 768 * 28 * 28))
PUBLISHED: dict[str, tuple[dict[str, Any], int, str]] = {
    "Qwen/Qwen2.5-VL-7B-Instruct": (
        {
            "model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "vocab_size": 152064, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "vision_config": {
                "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                "hidden_act": "silu",
            },
        },
        8_292_166_656,
        "config.json of Qwen/Qwen2.5-VL-7B-Instruct (hub), 8.29B parameters on its model card",
    ),
    "Qwen/Qwen2-VL-2B-Instruct": (
        {
            "model_type": "qwen2_vl", "hidden_size": 1536, "intermediate_size": 8960,
            "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
            "vocab_size": 151936, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "tie_word_embeddings": True, "torch_dtype": "bfloat16",
            "vision_config": {
                "depth": 32, "embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4, "num_heads": 16,
                "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
            },
        },
        2_208_985_600,
        "config.json of Qwen/Qwen2-VL-2B-Instruct (hub), 2.21B parameters on its model card",
    ),
}  # fmt: skip
# The released Qwen2-VL / Qwen2.5-VL chat template, for a system message and a user message that is the
# video then the text (dataengine.caption.engines.base.chat_messages).
QWEN2_CHAT = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
    "{user}<|im_end|>\n<|im_start|>assistant\n"
)


def smart_resize(
    height: int,
    width: int,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    frames: int | None = None,
    temporal: int = 2,
) -> tuple[int, int]:
    """Qwen-VL's resize: both sides multiples of ``factor`` (= patch x merge), the aspect ratio kept, the
    pixels within [min_pixels, max_pixels]: of one frame (Qwen2/2.5-VL), or with ``frames`` of the whole
    clip, its frames rounded to ``temporal``, small sides first scaled up to ``factor`` (Qwen3-VL).
    transformers' qwen2_vl and qwen3_vl video_processing ``smart_resize``."""
    t = n = 1
    if frames is not None:
        t, n = round(frames / temporal) * temporal, frames
        if height < factor or width < factor:
            scale = max(factor / height, factor / width)
            height, width = int(height * scale), int(width * scale)
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if t * h * w > max_pixels:
        beta = math.sqrt(n * height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif t * h * w < min_pixels:
        beta = math.sqrt(min_pixels / (n * height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def video_tokens(
    frames: int,
    height: int,
    width: int,
    patch: int,
    merge: int,
    temporal: int,
    min_pixels: int,
    max_pixels: int,
    per_clip: bool = False,
) -> int:
    """Language-model tokens of one video: grid_t x grid_h x grid_w patches, merge x merge patches a token.

    grid_t = ceil(frames / temporal) (the last frame repeated), grid_h x grid_w = the smart-resized frame in
    ``patch``-pixel patches. ``per_clip``: Qwen3-VL's limits on the whole clip's pixels.
    """
    clip = (frames, temporal) if per_clip else ()
    h, w = smart_resize(height, width, patch * merge, min_pixels, max_pixels, *clip)
    grid_t = -(-frames // temporal)
    return grid_t * (h // patch) * (w // patch) // (merge * merge)


@dataclass(frozen=True)
class Vision:
    """The processor's video rule for one model, and where its numbers come from."""

    family: str  # the config's model_type
    patch: int
    merge: int
    temporal: int
    limits: tuple[tuple[int, int], ...]  # (min_pixels, max_pixels) candidates; the first is the one used
    per_clip: bool
    source: str

    def tokens(self, frames: int, height: int, width: int, limits: tuple[int, int] | None = None) -> int:
        low, high = limits or self.limits[0]
        args = (self.patch, self.merge, self.temporal, low, high, self.per_clip)
        return video_tokens(frames, height, width, *args)

    def resized(self, frames: int, height: int, width: int) -> tuple[int, int]:
        low, high = self.limits[0]
        extra = (frames, self.temporal) if self.per_clip else ()
        return smart_resize(height, width, self.patch * self.merge, low, high, *extra)


@dataclass(frozen=True)
class Model:
    """The caption model as the plan sees it: its configuration, processor rule and how text is counted."""

    name: str
    config: dict[str, Any]  # config.json's keys (flat as on the hub, or text_config / vision_config)
    path: str | None  # a local folder with the processor and tokenizer, or None (a hub id)
    vision: Vision
    published_params: int | None
    source: str


def caption_model(name: str, engine: Any) -> Model:
    """``name``'s architecture: a local folder's (builtins included) or a known hub id's published config."""
    path = resolve_model(name) if name.startswith(BUILTIN) or Path(name).expanduser().is_dir() else None
    if path is not None:
        folder = Path(path).expanduser()
        config = json.loads((folder / "config.json").read_text())
        video = json.loads((folder / "video_preprocessor_config.json").read_text())
        limits = ((video["size"]["shortest_edge"], video["size"]["longest_edge"]),)
        family = config["model_type"]
        rule = Vision(
            family,
            video["patch_size"],
            video["merge_size"],
            video["temporal_patch_size"],
            limits,
            family == "qwen3_vl",
            f"{folder.name}/video_preprocessor_config.json ({video['video_processor_type']})",
        )
        return Model(name, config, str(folder), _overridden(rule, engine), None, f"{folder}/config.json")
    if name not in PUBLISHED:
        known = ", ".join(PUBLISHED)
        raise ConfigError(f"plan: no published configuration for {name!r} here; known hub ids: {known}")
    config, params, source = PUBLISHED[name]
    v = config["vision_config"]
    rule = Vision(
        config["model_type"],
        v["patch_size"],
        v["spatial_merge_size"],
        v["temporal_patch_size"],
        QWEN2_VL_VIDEO_LIMITS,
        False,
        "preprocessor_config.json of the hub folder (Qwen2VLVideoProcessor)",
    )
    return Model(name, config, None, _overridden(rule, engine), params, source)


def _overridden(rule: Vision, engine: Any) -> Vision:
    """vLLM's ``mm_processor_kwargs`` (engine.extra) override the processor's pixel limits."""
    kwargs = dict(getattr(engine, "extra", {}).get("mm_processor_kwargs") or {})
    kwargs |= kwargs.pop("videos_kwargs", None) or {}
    size = kwargs.get("size") or {}
    low = kwargs.get("min_pixels", size.get("shortest_edge"))
    high = kwargs.get("max_pixels", size.get("longest_edge"))
    if low is None and high is None:
        return rule
    limits = ((low or rule.limits[0][0], high or rule.limits[0][1]),)
    return Vision(**{**rule.__dict__, "limits": limits, "source": "caption.engine.extra.mm_processor_kwargs"})


class TextCounter:
    """Tokens of prompt text: the model's own tokenizer and chat template where the folder has them, else an
    estimate for the Qwen2 vocabulary (151,643 byte-level BPE tokens): one token per piece of its
    pre-tokenizer (a word with its leading space, a digit, a run of punctuation), a lower bound that
    common English words meet; added tokens (``<|im_start|>``, ...) count one each."""

    def __init__(self, model: Model) -> None:
        self.processor: Any = None
        if model.path is not None:
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(model.path)
            self.source = f"counted with {model.name}'s own tokenizer and chat template"
        else:
            from tokenizers import Regex, pre_tokenizers

            self._split = pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated")
            self.source = "estimate: Qwen2 pre-tokenizer pieces, one token each (no Qwen2 vocabulary here)"

    def count(self, text: str) -> int:
        if self.processor is not None:
            return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        parts = re.split(r"(<\|[a-z_]+\|>)", text)  # added tokens are matched before the pre-tokenizer
        return sum(1 if i % 2 else len(self._split.pre_tokenize_str(p)) for i, p in enumerate(parts) if p)

    def chat(self, system: str, user: str, video: bool) -> int:
        """Tokens of the rendered chat prompt (generation prompt included); a video placeholder counts 0."""
        if self.processor is None:
            text = QWEN2_CHAT.format(system=system, user=user)
            if not video:
                text = text.replace("<|vision_start|><|video_pad|><|vision_end|>", "")
            return self.count(text) - (1 if video else 0)
        content: list[dict[str, Any]] = [{"type": "text", "text": user}]
        if video:
            content.insert(0, {"type": "video"})
        messages = [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": content},
        ]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.count(text) - (1 if video else 0)

    def timestamp_tokens(self, frames: int, fps: float, temporal: int) -> int:
        """Qwen3-VL: ``<t seconds>`` before each temporal patch, with a vision start and end of its own."""
        groups = -(-frames // temporal)
        times = [((g * temporal) / fps + (g * temporal + temporal - 1) / fps) / 2 for g in range(groups)]
        return sum(self.count(f"<{t:.1f} seconds>") + 2 for t in times)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's keys: a nested ``text_config`` (local folders) or the flat hub layout."""
    return dict(config.get("text_config") or config)


def hf_config(config: dict[str, Any], layers: int | None = None, vision_blocks: int | None = None) -> Any:
    """The transformers configuration of ``config`` (config.json's keys), cut to ``layers`` language layers
    and ``vision_blocks`` vision blocks (the last one of them a full-attention block)."""
    from transformers import AutoConfig

    keys = {
        k: v for k, v in config.items() if k not in ("model_type", "architectures", "transformers_version")
    }
    hf = AutoConfig.for_model(config["model_type"], **keys)
    text, vision = hf.text_config, hf.vision_config
    if layers is not None and layers < text.num_hidden_layers:
        text.num_hidden_layers = layers
        if getattr(text, "layer_types", None):
            text.layer_types = text.layer_types[:layers]
    if vision_blocks is not None and vision_blocks < vision.depth:
        vision.depth = vision_blocks
        for key in ("fullatt_block_indexes", "deepstack_visual_indexes"):
            if getattr(vision, key, None):
                setattr(
                    vision,
                    key,
                    [i for i in getattr(vision, key) if i < vision_blocks - 1] + [vision_blocks - 1],
                )
    return hf


def count_params(config: dict[str, Any]) -> dict[str, int]:
    """Parameter counts of the full architecture, built on the meta device (no memory, no init)."""
    import torch
    from transformers import AutoModelForImageTextToText

    hf = hf_config(config)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(hf)
    visual = model.model.visual
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    vis = sum(p.numel() for p in visual.parameters())
    merger = sum(p.numel() for p in visual.merger.parameters())
    untied = 0 if head is embed else head.numel()
    vcfg = hf.vision_config
    return {
        "total": total,
        "visual": vis,
        "merger": merger,
        "head": head.numel(),
        "body": total - vis - embed.numel() - untied,
        "vision_depth": vcfg.depth,
        "vision_width": getattr(vcfg, "embed_dim", None) or vcfg.hidden_size,
        "window": (getattr(vcfg, "window_size", 0) or 0) // vcfg.patch_size,
        "full_blocks": len(getattr(vcfg, "fullatt_block_indexes", None) or range(vcfg.depth)),
    }


def run_window(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the (cut) model with random float32 weights and run one window: the vision tower on the
    processor's pixel values, then one prefill of the language model over the whole prompt, after a warm-up
    pass on a tiny video (first-call library set-up). Module level: ``measure_isolated`` runs it in a
    fresh process. ``activation_bytes``: the peak of the window's pass above what was resident before it."""
    import resource
    import time

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2VLVideoProcessor

    hf = hf_config(spec["config"], spec["layers"], spec["vision_blocks"])
    vision = hf.vision_config
    if spec["path"] is not None:  # the folder's processor, as the transformers engine loads it
        processor = AutoProcessor.from_pretrained(spec["path"])
    else:  # the published settings
        low, high = spec["limits"]
        processor = Qwen2VLVideoProcessor(
            size={"shortest_edge": low, "longest_edge": high},
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            merge_size=vision.spatial_merge_size,
        )
    torch.manual_seed(0)
    started = time.perf_counter()
    model = AutoModelForImageTextToText.from_config(hf, dtype=torch.float32).eval()
    build_s = time.perf_counter() - started
    times: dict[str, float] = {}
    rows: list[int] = []

    def pre(*_: Any) -> None:
        times["vision_start"] = time.perf_counter()

    def post(_module: Any, _args: Any, output: Any) -> None:
        times["vision_end"] = time.perf_counter()
        merged = getattr(output, "pooler_output", None)
        merged = merged if merged is not None else output[0] if isinstance(output, tuple) else output
        rows.append(int(merged.shape[0]))

    model.model.visual.register_forward_pre_hook(pre)
    model.model.visual.register_forward_hook(post)
    side = 2 * vision.patch_size * vision.spatial_merge_size
    with torch.inference_mode():
        model(
            **_inputs(
                spec | {"frames": 2, "height": side, "width": side, "prompt_tokens": None}, processor, hf
            )
        )
        inputs = _inputs(spec, processor, hf)
        rows.clear()
        resident = _resident_bytes()
        started = time.perf_counter()
        model(**inputs, logits_to_keep=1, use_cache=False)
        total = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    vision_s = times["vision_end"] - times["vision_start"]
    return {
        "vision_tokens": sum(rows),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "vision_s": vision_s,
        "prefill_s": total - vision_s,
        "build_s": build_s,
        "built_params": sum(p.numel() for p in model.parameters()),
        "activation_bytes": max(0, peak - resident),
    }


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _inputs(spec: dict[str, Any], processor: Any, hf: Any) -> dict[str, Any]:
    """The model's inputs for one window of random frames: through the folder's processor and chat template
    as the transformers engine sends them, or (a hub model) through the published video processor, with
    stand-in text tokens around the video where the chat template puts it."""
    import torch

    from dataengine.caption.engines.base import video_metadata

    shape = (spec["frames"], spec["height"], spec["width"], 3)
    frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    metadata = video_metadata(frames, spec["fps"])
    metadata.pop("do_sample_frames")
    if spec["path"] is not None:
        video = {"type": "video", "video": frames}
        messages = [
            {"role": "system", "content": [{"type": "text", "text": spec["system"]}]},
            {"role": "user", "content": [video, {"type": "text", "text": spec["user"]}]},
        ]
        kwargs = {"video_metadata": [metadata], "do_sample_frames": False}
        inputs = dict(
            processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                processor_kwargs=kwargs,
            )
        )  # fmt: skip
    else:
        out = processor(
            videos=[frames], do_sample_frames=False, cap_pixels_per_frame=False, return_tensors="pt"
        )
        n = int(out["video_grid_thw"].prod()) // hf.vision_config.spatial_merge_size**2
        before = spec["before"]
        after = 4 if spec["prompt_tokens"] is None else spec["prompt_tokens"] - n - before - 2
        ids = [100] * before + [hf.vision_start_token_id] + [hf.video_token_id] * n + [hf.vision_end_token_id]
        ids += [100] * after
        inputs = {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values_videos": out["pixel_values_videos"],
            "video_grid_thw": out["video_grid_thw"],
        }
    if "mm_token_type_ids" not in inputs:  # what the processor adds for M-RoPE: 2 marks a video token
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == hf.video_token_id).int() * 2
    return inputs
