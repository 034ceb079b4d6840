"""The caption stage at its real shapes: visual tokens per window, the context budget, the model, FLOPs.

A clip is the recipe's longest (``split.max_clip_s``) of a ``source`` video, decoded to the caption view by
decode's own arithmetic and cut into windows by the caption stage's own rule. Each window is one request:
the chat-template prompt plus the window's video tokens, counted by the Qwen-VL processors' rules (the
arithmetic is ``video_tokens``); a clip of more than one window adds a text-only fuse request. Both must fit
the engine's context with ``sampling.max_tokens`` to spare, or the plan stops with a ``BudgetError`` before
anything is built. Then the model is built from configuration (random weights: a local folder's config, or
a hub model's published config.json values: qwen_vl.py) and one window is pushed through its vision tower and
one prefill of its language model, cut to ``layers`` layers, in a fresh process that measures its peak.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dataengine.caption.engines import OpenAIEngineConfig, VLLMEngineConfig
from dataengine.caption.prompts import get_prompt
from dataengine.caption.schema import json_schema
from dataengine.plan import BudgetError, StagePlan, human_bytes, human_count, measure_isolated
from dataengine.records import Clip, ProbeInfo
from dataengine.stages.decode import plan_view
from pipelines.plan.qwen_vl import (
    QWEN2_CHAT,
    Model,
    TextCounter,
    Vision,
    caption_model,
    count_params,
    run_window,
    text_config,
)
from pipelines.recipes import RecipeConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
MEASURE_FLOPS = 2e12  # the vision FLOPs of one window run here at most (~40 s on 2 shared cores)


@dataclass(frozen=True)
class Window:
    frames: int
    prompt_text: int  # chat prompt tokens without the video
    video: int  # video tokens (+ Qwen3-VL's timestamps and per-frame markers)

    @property
    def prompt(self) -> int:
        return self.prompt_text + self.video


def _clip_view(recipe: RecipeConfig, source: tuple[int, int], source_fps: float) -> tuple[Any, Clip]:
    """The caption view of the recipe's longest clip of a ``source`` (w, h) video, by decode's arithmetic."""
    duration = recipe.split.max_clip_s
    probe = ProbeInfo(
        duration_s=duration,
        avg_fps=source_fps,
        r_fps=source_fps,
        n_frames=max(1, round(duration * source_fps)),
        n_frames_exact=True,
        width=source[0],
        height=source[1],
        rotation=0,
        codec="h264",
        pix_fmt="yuv420p",
        bit_depth=8,
        is_vfr=False,
        has_audio=False,
        container="mp4",
        size_bytes=1,
    )
    clip = Clip(
        clip_id="plan",
        video_id="plan",
        uri="plan",
        path="plan",
        index=0,
        start_s=0.0,
        end_s=duration,
        shot=0,
        probe=probe,
    )
    return plan_view(recipe.decode.views[recipe.caption.view], clip), clip


def _window_sizes(frames: int, window: int) -> list[int]:
    """The caption stage's cut (``stages.caption._windows``): the fewest windows of at most ``window`` frames,
    as equal in length as possible."""
    bounds = np.linspace(0, frames, -(-frames // window) + 1).round().astype(int)
    return [int(b - a) for a, b in itertools.pairwise(bounds)]


def _context_limit(recipe: RecipeConfig, model: Model) -> tuple[int, str]:
    engine = recipe.caption.engine
    if isinstance(engine, VLLMEngineConfig):
        return engine.max_model_len, "caption.engine.max_model_len"
    text = text_config(model.config)
    return int(text["max_position_embeddings"]), f"{model.name} max_position_embeddings (config.json)"


@dataclass
class Budget:
    """A recipe's caption requests per clip, counted: what ``caption_budget`` checked."""

    model: Model
    counter: TextCounter
    view: Any  # decode's ViewPlan of the caption view
    clip: Clip
    windows: list[Window]
    fuse_prompt: int  # the fuse pass's prompt, at most; 0: one window, no fuse pass
    limit: int
    budget: str  # the name of the limit

    @property
    def worst(self) -> Window:
        return max(self.windows, key=lambda w: w.prompt)


def caption_budget(
    recipe: RecipeConfig, source: tuple[int, int] = (1920, 1080), source_fps: float = 30.0
) -> Budget:
    """Count the caption requests of the recipe's longest clip and check them against the engine's context;
    nothing is built. Raises ``BudgetError`` naming the budget, the numbers and the overrides that fix it."""
    cfg, engine = recipe.caption, recipe.caption.engine
    model = caption_model(engine.model, engine)
    view, clip = _clip_view(recipe, source, source_fps)
    counter = TextCounter(model)
    prompt, rule, max_tokens = get_prompt(cfg.prompt_id), model.vision, cfg.sampling.max_tokens
    limit, budget = _context_limit(recipe, model)
    fuse = get_prompt(cfg.fuse_prompt_id)
    fuse_text = counter.chat(fuse.system, fuse.render(duration_s=clip.duration_s, windows=""), False)
    fuse_line = counter.count(f"[{clip.duration_s:.1f} s] \n")  # each window's caption JSON follows it
    windows: dict[int, Window] = {}

    def window(frames: int) -> Window:
        if frames not in windows:
            sent = frames + frames % 2  # engines.base.even_frames
            user = prompt.render(duration_s=frames / view.fps, n_frames=frames, fps=view.fps)
            video = rule.tokens(sent, view.height, view.width)
            if rule.family == "qwen3_vl":
                video += counter.timestamp_tokens(sent, view.fps, rule.temporal)
            windows[frames] = Window(frames, counter.chat(prompt.system, user, True), video)
        return windows[frames]

    def requests(frames: int, size: int) -> tuple[list[Window], int, bool]:
        """The windows of a clip of ``frames`` frames, the fuse prompt at most, and whether all fit."""
        parts = [window(n) for n in _window_sizes(frames, size)]
        fused = fuse_text + len(parts) * (max_tokens + fuse_line) if len(parts) > 1 else 0
        return (
            parts,
            fused,
            max(w.prompt for w in parts) + max_tokens <= limit and fused + max_tokens <= limit,
        )

    parts, fused, ok = requests(view.expected, cfg.window_frames)
    plan = Budget(model, counter, view, clip, parts, fused, limit, budget)
    if ok:
        return plan
    sizes = [f for f in range(cfg.window_frames - 1, 1, -1) if requests(view.expected, f)[2]]
    frames = [f for f in range(view.expected - 1, 0, -1) if requests(f, cfg.window_frames)[2]]
    fixes = [f"caption.window_frames={sizes[0]}"] if sizes else []
    fixes += [f"decode.views.{cfg.view}.max_frames={frames[0]}"] if frames else []
    worst = plan.worst
    if worst.prompt + max_tokens > limit:
        need = worst.prompt + max_tokens
        what = (
            f"a window of {worst.frames} frames at {view.width}x{view.height} is {worst.video} video "
            f"tokens + {worst.prompt_text} prompt tokens + {max_tokens} output tokens "
            f"(caption.sampling.max_tokens) = {need} > {limit}"
        )
        fixes.append(f"a smaller decode.views.{cfg.view}.size")
    else:
        need = fused + max_tokens
        what = (
            f"the fuse pass of {len(parts)} windows is up to {fused} prompt tokens (each window's caption "
            f"up to {max_tokens}) + {max_tokens} output tokens = {need} > {limit}"
        )
        fixes.append("a lower caption.sampling.max_tokens")
    fixes.append(f"{budget}={need} or more")
    raise BudgetError("caption", budget, what, ", or ".join(fixes))


def plan_caption(
    recipe: RecipeConfig,
    layers: int | None = 2,
    source: tuple[int, int] = (1920, 1080),
    *,
    source_fps: float = 30.0,
    vision_blocks: int | Literal["all", "auto"] = "auto",
) -> StagePlan:
    """The caption stage of ``recipe`` for its longest clip of a ``source`` (width, height) video.

    ``layers``: language-model layers built and run here (None: all). ``vision_blocks``: vision blocks
    built and run here: "all", a number, or "auto": all when one window's vision FLOPs are at most
    ``MEASURE_FLOPS``, else that share of them (at least 2, the last a full-attention block; every block
    runs on the same tokens, so the peak holds and the time scales). ``source_fps``: used only by a view
    with ``fps=None``. Raises ``BudgetError`` (before anything is built) when a request does not fit the
    engine's context, ``ConfigError`` for a hub model with no published configuration here.
    """
    b = caption_budget(recipe, source, source_fps)
    cfg, engine, model, rule, view, worst = (
        recipe.caption,
        recipe.caption.engine,
        b.model,
        b.model.vision,
        b.view,
        b.worst,
    )
    counts, text = count_params(model.config), text_config(model.config)
    n_layers, depth = text["num_hidden_layers"], counts["vision_depth"]
    built = n_layers if layers is None else min(layers, n_layers)
    blocks = depth if vision_blocks == "all" else vision_blocks if isinstance(vision_blocks, int) else 0
    if vision_blocks == "auto":
        share = MEASURE_FLOPS / _vision_flops(counts, rule, view, worst.frames)
        blocks = depth if share >= 1 else max(2, int(depth * share))
    blocks = min(blocks, depth)
    cut = [f"{built} of {n_layers} language layers"] if built < n_layers else []
    cut += [f"{blocks} of {depth} vision blocks"] if blocks < depth else []
    built_with = f"built with {', '.join(cut) or 'all layers'}"
    if isinstance(engine, OpenAIEngineConfig):
        built_with = "not built: a server runs it"
    name = f"{model.name} ({model.config['model_type']}; {built_with})"
    plan = StagePlan("caption", name, counts["total"])
    if model.published_params is not None:
        plan.fact("parameters (published)", human_count(model.published_params), model.source)
    plan.fact(
        "parameters",
        f"{counts['total']:,} (vision {counts['visual']:,})",
        f"{model.source}; on the meta device",
    )
    plan.fact(
        "clip",
        f"{view.expected} frames at {view.fps:g} fps, {view.width}x{view.height}",
        f"decode's plan_view of a {recipe.split.max_clip_s:g} s clip (split.max_clip_s)",
    )
    plan.fact(
        "windows per clip",
        f"{len(b.windows)} ({', '.join(str(w.frames) for w in b.windows)} frames)",
        f"caption.window_frames={cfg.window_frames}, cut as the caption stage cuts",
    )
    sent = worst.frames + worst.frames % 2
    h, w = rule.resized(sent, view.height, view.width)
    plan.fact(
        "processed frame",
        f"{w}x{h} ({h // rule.patch}x{w // rule.patch} patches)",
        f"smart_resize, {rule.source}: patch {rule.patch}, merge {rule.merge}, temporal {rule.temporal}, "
        f"pixels {rule.limits[0]}",
    )
    plan.fact(
        "video tokens per window",
        worst.video,
        f"ceil({sent}/{rule.temporal}) x {h // rule.patch} x {w // rule.patch} / {rule.merge}^2"
        + (" + a timestamp and markers per temporal patch" if rule.family == "qwen3_vl" else ""),
    )
    for other in rule.limits[1:]:
        if (alt := rule.tokens(sent, view.height, view.width, other)) != rule.tokens(
            sent, view.height, view.width
        ):
            plan.notes.append(
                f"with video pixel limits {other} instead, a window would be {alt} video tokens"
            )
    plan.fact(
        "prompt tokens per window",
        worst.prompt_text,
        f"{cfg.prompt_id} in the chat template, {b.counter.source}",
    )
    schema = json.dumps(json_schema(worst.frames / view.fps))
    plan.fact(
        "caption schema",
        f"{b.counter.count(schema)} tokens ({len(schema)} characters)",
        "guided decoding holds the output to it; the prompt does not contain it",
    )
    plan.fact("context per window", f"{worst.prompt} + {cfg.sampling.max_tokens} out <= {b.limit}", b.budget)
    if b.fuse_prompt:
        plan.fact(
            "fuse pass",
            f"<= {b.fuse_prompt} + {cfg.sampling.max_tokens} out <= {b.limit}",
            cfg.fuse_prompt_id,
        )
    flops = _flops(counts, text, rule, view, b.windows, b.fuse_prompt, cfg.sampling.max_tokens)
    plan.flops_per_clip = sum(flops.values())
    plan.fact(
        "FLOPs per clip",
        f"{human_count(plan.flops_per_clip)} ("
        + ", ".join(f"{k} {human_count(v)}" for k, v in flops.items())
        + ")",
        "derived, per window: vision 2 x params x patches + 4 x patches x attention span x width a block; "
        "prefill 2 x non-embedding params x tokens + 2 x tokens^2 x width a layer; decode of max_tokens: "
        "2 x params + 4 x context x width a layer, a token; the fuse pass likewise",
    )
    plan.bytes_out_per_clip = 4 * cfg.sampling.max_tokens  # at most max_tokens of JSON, ~4 bytes a token
    if isinstance(engine, OpenAIEngineConfig):
        plan.notes.append(
            "openai engine: the server runs the model; arithmetic only, nothing built or measured. The "
            "server decodes the mp4 itself (its frames are assumed to be the view's) and its "
            "--max-model-len is not known here: the budget is the model's max_position_embeddings"
        )
        return plan
    system = get_prompt(cfg.prompt_id).system
    spec = {
        "config": model.config,
        "layers": built,
        "vision_blocks": blocks,
        "frames": sent,
        "height": view.height,
        "width": view.width,
        "fps": view.fps,
        "path": model.path,
        "limits": rule.limits[0],
        "system": system,
        "prompt_tokens": worst.prompt,
        "before": b.counter.count(QWEN2_CHAT.split("<|vision_start|>")[0].format(system=system)),
        "user": get_prompt(cfg.prompt_id).render(
            duration_s=worst.frames / view.fps, n_frames=worst.frames, fps=view.fps
        ),
    }
    result, peak = measure_isolated(run_window, spec)
    assert result["vision_tokens"] == rule.tokens(sent, view.height, view.width), (result, worst)
    assert result["prompt_tokens"] == worst.prompt, (result["prompt_tokens"], worst.prompt)
    plan.peak_bytes_here = peak
    plan.fact(
        "vision tokens (measured)", result["vision_tokens"], "rows out of the vision tower, measured here"
    )
    plan.fact(
        "one window here",
        f"vision {result['vision_s']:.2f} s"
        + (
            f" ({blocks} blocks; ~{result['vision_s'] * depth / blocks:.0f} s for {depth})"
            if blocks < depth
            else ""
        )
        + f", prefill of {worst.prompt} tokens "
        f"{result['prefill_s']:.2f} s (build {result['build_s']:.1f} s); peak {human_bytes(peak)}, of which "
        f"the window's pass {human_bytes(result['activation_bytes'])}",
        "measured here: float32 on this CPU, random weights",
    )
    gpu = DTYPE_BYTES.get(str(engine.dtype), 2)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    kv_len = b.limit if isinstance(engine, VLLMEngineConfig) else worst.prompt + cfg.sampling.max_tokens
    kv = 2 * n_layers * text["num_key_value_heads"] * head_dim * kv_len * gpu
    activations = result["activation_bytes"] * gpu // 4
    plan.gpu_bytes = counts["total"] * gpu + kv + activations
    plan.fact(
        "GPU memory (estimate)",
        f"{human_bytes(plan.gpu_bytes)}: weights {human_bytes(counts['total'] * gpu)} + KV cache of "
        f"{kv_len} tokens {human_bytes(kv)} + activations {human_bytes(activations)}",
        f"{engine.dtype}: {gpu} bytes; KV 2 x {n_layers} layers x {text['num_key_value_heads']} kv heads x "
        f"{head_dim} x tokens x {gpu}; activations: the window's pass here (its peak above what was "
        f"resident before it, float32), x {gpu}/4",
    )
    if isinstance(engine, VLLMEngineConfig):
        plan.notes.append(
            f"vLLM takes gpu_memory_utilization={engine.gpu_memory_utilization} of the card at "
            "start and fills what the weights leave with KV cache: the estimate is what it needs"
        )
    if cut:
        plan.notes.append(
            f"built here with {', '.join(cut)}, random weights: the times and peak are the cut "
            "model's; parameters, FLOPs and GPU memory the full architecture's"
        )
    if model.path is None:
        plan.notes.append(
            "transformers' Qwen2VL video processor applies no total pixel cap by default; from "
            "v5.22 cap_pixels_per_frame is on (it binds only far beyond 32 frames of 448 px)"
        )
    return plan


def _flops(
    counts: dict[str, int],
    text: dict[str, Any],
    rule: Vision,
    view: Any,
    windows: list[Window],
    fuse_prompt: int,
    max_tokens: int,
) -> dict[str, float]:
    """FLOPs of one clip by part: vision, prefill and decode over its windows, and the fuse pass."""
    layers = text["num_hidden_layers"]
    width = text["num_attention_heads"] * (
        text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    )

    def prefill(tokens: int) -> float:  # causal: QK^T and AV over tokens^2 / 2 pairs, plus the last logits
        return 2 * counts["body"] * tokens + 2 * layers * tokens**2 * width + 2 * counts["head"]

    def decode(tokens: int) -> float:  # each output token: all weights, attention over everything before it
        steps = max_tokens * tokens + max_tokens * (max_tokens - 1) / 2
        return 2 * (counts["body"] + counts["head"]) * max_tokens + 4 * layers * width * steps

    return {
        "vision": sum(_vision_flops(counts, rule, view, w.frames) for w in windows),
        "prefill": sum(prefill(w.prompt) for w in windows),
        "decode": sum(decode(w.prompt) for w in windows),
        "fuse": prefill(fuse_prompt) + decode(fuse_prompt) if fuse_prompt else 0.0,
    }


def _vision_flops(counts: dict[str, int], rule: Vision, view: Any, frames: int) -> float:
    """One window through the vision tower: its weights once a patch (the merger's once a token), and
    attention over each block's span: a window of patches, or the whole frame in full-attention blocks."""
    sent = frames + frames % 2
    h, w = rule.resized(sent, view.height, view.width)
    frame = (h // rule.patch) * (w // rule.patch)
    patches = -(-sent // rule.temporal) * frame
    full, depth = counts["full_blocks"], counts["vision_depth"]
    spans = full * frame + (depth - full) * min(frame, counts["window"] ** 2)
    linear = (
        2 * (counts["visual"] - counts["merger"]) * patches + 2 * counts["merger"] * patches / rule.merge**2
    )
    return linear + 4 * patches * spans * counts["vision_width"]
