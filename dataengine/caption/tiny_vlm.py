"""Tiny, randomly initialised Qwen-VL checkpoints built offline: real plumbing, nonsense captions.

``build_tiny_vlm`` writes a folder that ``vllm.LLM(model=folder)`` and transformers'
``AutoModelForImageTextToText`` / ``AutoProcessor`` both load with no hub: safetensors weights, config,
generation config, a byte-level BPE trained here on a small built-in corpus and wrapped as the family's
tokenizer, image and video processor configs, and the family's chat template. ``ensure_tiny_vlm`` keeps one
such folder per config in an on-disk cache, safely under concurrent callers.

Token ids: the trained BPE takes ids ``0 .. vocab_size - 1``, the family's special tokens follow in the
released order (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ..., ``<|vision_start|>``, ...,
``<|video_pad|>``), then its added plain tokens (``<tool_call>``, ...). The model's vocabulary is exactly the
tokenizer's, so every id a greedy argmax picks decodes. ``eos`` is ``<|im_end|>``, ``pad`` ``<|endoftext|>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dataengine import model_cache
from dataengine.model_cache import build_folder, cache_key, cached_folder

Family = Literal["qwen2_5_vl", "qwen3_vl"]

_BUILDER_VERSION = "1"  # part of the cache key: bump it when what a build writes changes
_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)  # what vLLM's CPU attention supports
_QWEN_SPLIT = (  # Qwen2Tokenizer's pre-tokenizer regex
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
_PLAIN = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
          "<|repo_name|>", "<|file_sep|>"]  # fmt: skip
_PLAIN_QWEN3 = ["<tool_response>", "</tool_response>", "<think>", "</think>"]
_FRAME_PIXELS = 224 * 224


class TinyVLMConfig(BaseModel):
    """What to build. The defaults start a vLLM CPU engine in seconds; 8 frames of 112 x 112 cost 64 tokens.

    Frames are resized to at most 224 x 224 pixels' worth (``qwen3_vl``: 16 such frames per clip, counted
    over the clip, as its video processor does) and at least 56 x 56 (``qwen3_vl``: 64 x 64).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Family = "qwen2_5_vl"
    vocab_size: int = Field(default=1024, ge=320, le=1152, description="trained BPE size, 256 bytes included")
    hidden_size: int = Field(default=64, ge=32, le=2048)
    intermediate_size: int = Field(default=128, ge=32, le=8192)
    num_layers: int = Field(default=2, ge=1, le=8)
    num_heads: int = Field(default=2, ge=1, le=32)
    num_kv_heads: int = Field(default=1, ge=1, le=32)
    vision_depth: int = Field(default=2, ge=1, le=8)
    vision_hidden_size: int = Field(default=64, ge=32, le=2048)
    vision_num_heads: int = Field(default=2, ge=1, le=32)
    vision_patch_size: int | None = Field(
        default=None,
        ge=4,
        le=32,
        multiple_of=2,
        description="pixels per side of a vision patch; None: the family's released size (14 for "
        "qwen2_5_vl, 16 for qwen3_vl). Smaller patches cost more tokens per frame (a quarter the size, "
        "four times the tokens) and let a small tower see shapes inside a patch",
    )
    vision_merge_size: int | None = Field(
        default=None,
        ge=2,
        le=4,
        description="patches per side of the square the tower merges into one token for the text model; "
        "None: the released 2. With 8-px patches, 4 keeps the text model's tokens per frame those of 16-px "
        "patches merged by 2 while the tower sees a 4x finer grid; the merger's first layer is "
        "(vision_hidden_size x merge^2)^2, 16x larger at 4 than at 2",
    )
    max_position_embeddings: int = Field(default=4096, ge=1024, le=131072)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check_dims(self) -> TinyVLMConfig:
        if self.hidden_size % self.num_heads or self.hidden_size // self.num_heads not in _CPU_HEAD_DIMS:
            raise ValueError(f"hidden_size / num_heads must be one of {_CPU_HEAD_DIMS}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.vision_hidden_size % (4 * self.vision_num_heads):
            raise ValueError("vision_hidden_size / vision_num_heads must be a multiple of 4 (2-D rotary)")
        return self

    @property
    def patch_size(self) -> int:
        """The vision tower's patch side in pixels."""
        return self.vision_patch_size or (14 if self.family == "qwen2_5_vl" else 16)

    @property
    def merge_size(self) -> int:
        """Patches per side of one merged visual token."""
        return self.vision_merge_size or 2


_DEFAULT_CONFIG = TinyVLMConfig()


def build_tiny_vlm(
    out_dir: Path, config: TinyVLMConfig = _DEFAULT_CONFIG, corpus: Sequence[str] | None = None
) -> Path:
    """Build a checkpoint into ``out_dir`` atomically: in a temporary sibling folder, then one rename.

    The same config always gives the same files, byte for byte (``seed`` drives the random init).

    Args:
        out_dir: the folder to create; it must not exist, or be empty.
        config: what to build.
        corpus: the text the tokenizer's BPE is trained on; default: a small built-in corpus of caption
            prose, a structured caption and the chat frame. A model that will be trained on one kind of
            text (``distill.py``) gets a tokenizer trained on that text.

    Returns:
        ``out_dir``, complete.

    Raises:
        FileExistsError: ``out_dir`` has content, before the build or (another process) by its end.
    """
    return build_folder(out_dir, lambda tmp: _write_checkpoint(tmp, config, corpus))


def ensure_tiny_vlm(cache_root: Path | None = None, config: TinyVLMConfig = _DEFAULT_CONFIG) -> Path:
    """The cached checkpoint for ``config``, built only when missing; concurrent callers share one build.

    Args:
        cache_root: the cache folder; default ``$DATAENGINE_CACHE``, else ``~/.cache/dataengine/models``.
        config: what to build.

    Returns:
        ``<cache_root>/<family>-<first 12 hex digits of the config's hash>/``, complete.
    """
    key = cache_key(f"{_BUILDER_VERSION}\n{config.model_dump_json(exclude_none=True)}")  # None: as before
    target = model_cache.cache_root(cache_root) / f"{config.family}-{key}"
    return cached_folder(target, lambda out: build_tiny_vlm(out, config))


# ----------------------------------------------------------------------------------------------------------
# The checkpoint


def _write_checkpoint(out: Path, config: TinyVLMConfig, corpus: Sequence[str] | None) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    tokenizer = _tokenizer(config, corpus)
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
        torch.manual_seed(config.seed)
        model = AutoModelForImageTextToText.from_config(_model_config(config, tokenizer), dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext, pad_token_id=endoftext, eos_token_id=[im_end, endoftext], do_sample=False
    )
    model.save_pretrained(out)
    processor = _processor(config, tokenizer)
    processor.save_pretrained(out)  # processor_config.json (both processors), tokenizer, chat_template.jinja
    processor.image_processor.save_pretrained(out)  # preprocessor_config.json, as in the released folders
    processor.video_processor.save_pretrained(out)  # video_preprocessor_config.json


def _model_config(config: TinyVLMConfig, tokenizer: Any) -> Any:
    from transformers import AutoConfig

    ids = dict(zip(_SPECIAL, tokenizer.convert_tokens_to_ids(_SPECIAL), strict=True))
    half = config.hidden_size // config.num_heads // 2  # rotary frequencies per head, split over (t, h, w)
    text: dict[str, Any] = {
        "vocab_size": len(tokenizer), "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "max_position_embeddings": config.max_position_embeddings, "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
    }  # fmt: skip
    vision: dict[str, Any] = {
        "depth": config.vision_depth, "hidden_size": config.vision_hidden_size,
        "intermediate_size": 2 * config.vision_hidden_size, "num_heads": config.vision_num_heads,
        "out_hidden_size": config.hidden_size, "spatial_merge_size": config.merge_size, "temporal_patch_size": 2,
    }  # fmt: skip
    if config.family == "qwen2_5_vl":
        hw = half * 3 // 8  # the released mrope_section [16, 24, 24] of 64, scaled
        text["rope_parameters"] = {
            "rope_type": "default", "rope_theta": 1e6, "mrope_section": [half - 2 * hw, hw, hw],
        }  # fmt: skip
        vision |= {
            "patch_size": config.patch_size, "window_size": 8 * config.patch_size,
            "fullatt_block_indexes": [config.vision_depth - 1],
            "tokens_per_second": 2,
        }  # fmt: skip
    else:
        hw = half * 5 // 16  # the released [24, 20, 20] of 64, scaled
        text["head_dim"] = 2 * half
        text["rope_parameters"] = {
            "rope_type": "default", "rope_theta": 5e6, "mrope_section": [half - 2 * hw, hw, hw],
            "mrope_interleaved": True,
        }  # fmt: skip
        vision |= {
            "patch_size": config.patch_size, "num_position_embeddings": 576, "deepstack_visual_indexes": [0],
        }  # fmt: skip
    return AutoConfig.for_model(
        config.family,
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _processor(config: TinyVLMConfig, tokenizer: Any) -> Any:
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    # cap_pixels_per_frame=False: ``size`` alone bounds the frames (and it silences transformers' warning)
    common: dict[str, Any] = {
        "temporal_patch_size": 2, "merge_size": config.merge_size, "patch_size": config.patch_size,
    }  # fmt: skip
    if config.family == "qwen2_5_vl":
        size = {"shortest_edge": 56 * 56, "longest_edge": _FRAME_PIXELS}  # per frame
        video = Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False, **common)
        image = Qwen2VLImageProcessor(size=size, **common)
        return Qwen2_5_VLProcessor(image, tokenizer, video, chat_template=_QWEN2_5_VL_TEMPLATE)
    common |= {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    clip = {"shortest_edge": 4 * 64 * 64, "longest_edge": 16 * _FRAME_PIXELS}  # per clip: t * h * w
    video3 = Qwen3VLVideoProcessor(size=clip, cap_pixels_per_frame=False, **common)
    image = Qwen2VLImageProcessor(size={"shortest_edge": 64 * 64, "longest_edge": _FRAME_PIXELS}, **common)
    return Qwen3VLProcessor(image, tokenizer, video3, chat_template=_QWEN3_VL_TEMPLATE)


# ----------------------------------------------------------------------------------------------------------
# The tokenizer


def _tokenizer(config: TinyVLMConfig, corpus: Sequence[str] | None) -> Any:
    """A Qwen2 tokenizer whose BPE is trained on ``corpus`` (default: the built-in one, which must yield
    exactly ``vocab_size`` tokens; a given corpus may yield fewer, and the model's vocabulary follows)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())  # the normalizer, pre-tokenizer and decoder Qwen2Tokenizer rebuilds
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = BpeTrainer(vocab_size=config.vocab_size, initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator(corpus or _corpus(), trainer)  # no special tokens: they go after the BPE ids
    if corpus is None and bpe.get_vocab_size() != config.vocab_size:
        raise ValueError(f"the corpus trains at most {bpe.get_vocab_size()} tokens")
    trained = json.loads(bpe.to_str())["model"]
    kwargs: dict[str, Any] = {  # the released tokenizer_config: no bos, no unk, eos set below
        "vocab": trained["vocab"], "merges": [tuple(m) for m in trained["merges"]], "unk_token": None,
        "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "model_max_length": config.max_position_embeddings,
    }  # fmt: skip
    tokenizer = Qwen2Tokenizer(**kwargs)  # adds <|endoftext|> as id vocab_size
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIAL[1:]})
    plain = _PLAIN + (_PLAIN_QWEN3 if config.family == "qwen3_vl" else [])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def _corpus() -> list[str]:
    """Caption prose, a structured caption as JSON and the chat frame: a few KiB, fixed."""
    lines = CAPTION_PROSE.splitlines()
    sample = {
        "summary": lines[0],
        "subjects": [{"kind": "circle", "appearance": "a small red circle", "position": "left edge, middle",
                      "motion": "moves right at 40 px/s"}],
        "events": [{"start_s": 0.0, "end_s": 2.5, "description": lines[12]}],
        "setting": "a striped blue background", "lighting": "flat",
        "camera": {"shot": "wide", "angle": "eye level", "movement": "static"},
        "style": "animation", "on_screen_text": ["OPEN 24 HOURS"],
    }  # fmt: skip
    samples = [json.dumps(sample), json.dumps(sample, indent=2), json.dumps(sample, separators=(",", ":"))]
    turns = {"system": "You are a helpful assistant.", "user": "Describe this video.", "assistant": "{}"}
    chat = [f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns.items()]
    return lines + samples + chat + [f"<{t / 2:.1f} seconds>" for t in range(64)]


# ----------------------------------------------------------------------------------------------------------
# Built-in text: the BPE corpus and the families' chat templates (Qwen2.5-VL-Instruct, Qwen3-VL-Instruct)

CAPTION_PROSE = """\
A red circle moves slowly from the left edge of the frame to the right over a striped blue background.
The camera pans right while a green square drifts upward and a yellow triangle stays in the centre.
A woman in a white shirt walks along a busy city street at night, lit by shop windows and car headlights.
Two children play football on a sunny beach; waves roll in behind them and seagulls fly overhead.
A black dog runs across a wet field, jumps over a fallen branch and shakes water from its fur.
Close-up of hands slicing fresh vegetables on a wooden cutting board in a bright kitchen.
An aerial view of a winding mountain road through a pine forest covered with early morning fog.
A cyclist rides past parked cars on a quiet suburban street while leaves fall from the trees.
Animated text appears on a purple screen, letter by letter, then fades out after two seconds.
A man sitting at a desk types on a laptop; a cup of coffee steams next to a stack of papers.
Rain falls on a window; blurred traffic lights glow orange and red in the street below.
A small boat sails across a calm lake at sunset, leaving a long ripple on the golden water.
The orange circle bounces twice, grows larger, and then shrinks until it disappears completely.
Static shot of a checkerboard pattern with a blue square sliding diagonally from top left to bottom right.
Handheld footage of a crowded market: people buy fruit, vendors shout, and a scooter weaves past.
A hard cut changes the scene from a flat grey background to coloured vertical bars.
Slow zoom in on an old clock tower as birds circle around it under a cloudy sky.
A chef flips pancakes in a pan; steam rises and the batter turns golden brown.
Snow covers a quiet village; smoke drifts from chimneys and a car drives slowly up the hill.
A screen recording shows a cursor clicking through menus in a spreadsheet application.
Tracking shot following a runner on a track; the stadium seats behind her are mostly empty.
A cat sleeps on a sofa next to a window, its tail moving gently while sunlight shifts across the room.
Time-lapse of clouds moving quickly over a desert with tall red rocks and long shadows.
Low angle view of skyscrapers reflecting a bright blue sky; the camera tilts up toward the top.
A white triangle rotates clockwise in the middle of a dark frame, with no other motion.
Medium shot of two people talking at a table in a cafe; one of them laughs and points outside.
Underwater scene with colourful fish swimming around a coral reef in clear turquoise water.
A train crosses a bridge over a river while the camera holds a wide, steady view from the bank.
A hand draws a simple diagram on a whiteboard with a blue marker and then erases part of it.
Fireworks explode above a harbour at night, lighting up the boats and the crowd on the pier.
"""

_QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_QWEN3_VL_TEMPLATE = """\
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- macro render_content(content, do_vision_count) %}
    {%- if content is string %}
        {{- content }}
    {%- else %}
        {%- for item in content %}
            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}
                {%- if do_vision_count %}
                    {%- set image_count.value = image_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                <|vision_start|><|image_pad|><|vision_end|>
            {%- elif 'video' in item or item.type == 'video' %}
                {%- if do_vision_count %}
                    {%- set video_count.value = video_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                <|vision_start|><|video_pad|><|vision_end|>
            {%- elif 'text' in item %}
                {{- item.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
{%- endmacro %}
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- render_content(messages[0].content, false) + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments \
within <tool_call></tool_call> XML tags:\\n<tool_call>\\n\
{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + render_content(messages[0].content, false) + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- set content = render_content(message.content, True) %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
