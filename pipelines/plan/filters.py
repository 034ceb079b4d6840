"""The learned curation models of ``dataengine plan``: the recipe's ``filters.embed`` (a SigLIP or CLIP image
tower), ``filters.aesthetic`` (a CLIP image tower and the LAION head) and ``filters.caption_match`` (a full
CLIP), built from their configurations on the meta device: parameters, input shapes and FLOPs per clip
(``FlopCounterMode``, shapes only). Nothing runs here: no memory is measured, and the GPU number is the
weights at the recipe's dtype alone. The model-free ``descriptor`` embedding has no plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dataengine.config import ConfigError
from dataengine.curate.learned import LAION_DIMS, build_head
from dataengine.plan import StagePlan, human_bytes, human_count
from pipelines.plan.encode import COUNTED, Published, npy_bytes
from pipelines.recipes import RecipeConfig

SIGLIP_SO400M = "google/siglip-so400m-patch14-384"
CLIP_VIT_L14 = "openai/clip-vit-large-patch14"

# Published values; keys the config classes' defaults already hold are left out.
PUBLISHED_TOWERS: dict[str, Published] = {
    SIGLIP_SO400M: Published(
        {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
         "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 384, "patch_size": 14},
        f"huggingface.co/{SIGLIP_SO400M}/config.json (vision_config)",
    ),
    CLIP_VIT_L14: Published(
        {"model_type": "clip", "projection_dim": 768,
         "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                         "num_hidden_layers": 12, "max_position_embeddings": 77, "projection_dim": 768},
         "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                           "num_hidden_layers": 24, "image_size": 224, "patch_size": 14,
                           "projection_dim": 768}},
        f"huggingface.co/{CLIP_VIT_L14}/config.json",
    ),
}  # fmt: skip
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def tower_config(model: str) -> tuple[Any, str]:
    """The transformers configuration of ``model`` (a full CLIP, or an image tower's) and where it was read.

    Raises:
        ConfigError: a hub id with no published table here (hub files cannot be read).
    """
    from transformers import AutoConfig

    published = PUBLISHED_TOWERS.get(model)
    if published is not None:
        values = dict(published.config)
        return AutoConfig.for_model(values.pop("model_type"), **values), published.source
    if (Path(model) / "config.json").is_file():
        return AutoConfig.from_pretrained(model), f"{model}/config.json"
    raise ConfigError(
        f"{model!r}: no local config.json and no published configuration known here "
        f"(known: {', '.join(PUBLISHED_TOWERS)}); give a local folder or add its values to PUBLISHED_TOWERS"
    )


def plan_filters(recipe: RecipeConfig) -> list[StagePlan]:
    """One plan per learned curation model the recipe names (none for the CPU recipes)."""
    filters, plans = recipe.filters, []
    embed, aesthetic, match = filters.embed, filters.aesthetic, filters.caption_match
    if embed is not None and embed.kind != "descriptor" and embed.model:
        plans.append(_images("embed", embed.kind, embed.model, embed.frames, embed.device, embed.dtype))
    if aesthetic is not None:
        plans.append(_images("aesthetic", "clip", aesthetic.model, aesthetic.frames, aesthetic.device,
                             aesthetic.dtype, head=True))  # fmt: skip
    if match is not None:
        plans.append(_caption_match(match.model, match.frames, match.device, match.dtype))
    return plans


def _images(
    stage: str, kind: str, model: str, frames: int, device: str, dtype: str, head: bool = False
) -> StagePlan:
    """An image tower (``SiglipVisionModel`` pooled, ``CLIPVisionModelWithProjection``) on ``frames`` frames
    of a clip, and the LAION head on its embeddings when ``head``."""
    import torch
    import transformers

    config, source = tower_config(model)
    vision = getattr(config, "vision_config", config)  # a full checkpoint: its image tower
    if kind == "clip" and vision is not config:
        vision.projection_dim = config.projection_dim
    name = "CLIPVisionModelWithProjection" if kind == "clip" else "SiglipVisionModel"
    with torch.device("meta"):
        tower = getattr(transformers, name)(vision).eval()
        mlp = build_head(LAION_DIMS) if head else None
    dim = int(config.projection_dim if kind == "clip" else vision.hidden_size)
    pixels = torch.empty(frames, 3, vision.image_size, vision.image_size, device="meta")
    flops = _count(lambda: tower(pixel_values=pixels))
    params = _params(tower)
    if mlp is not None:
        flops += _count(lambda: mlp(torch.empty(frames, dim, device="meta")))
        params += _params(mlp)
    plan = StagePlan(stage, f"{name} ({human_count(params)} params; {model})", params, flops_per_clip=flops)
    plan.fact("architecture", f"{name}: {_describe(vision)}", source)
    plan.fact(
        "input", f"{frames}x3x{vision.image_size}x{vision.image_size}", f"filters.{stage}.frames per clip"
    )
    plan.fact("patches per frame", (vision.image_size // vision.patch_size) ** 2, source)
    plan.fact("FLOPs per clip", human_count(flops), COUNTED)
    if stage == "embed":
        plan.bytes_out_per_clip = npy_bytes((dim,), 4)
        plan.fact("stored per clip", f"clip_emb.npy float32 {dim}", "dataengine.samples: one unit vector")
    if mlp is not None:
        plan.fact("head", "x".join(map(str, LAION_DIMS)), "dataengine.curate.learned.LAION_DIMS")
    _gpu(plan, params, device, dtype)
    return plan


def _caption_match(model: str, frames: int, device: str, dtype: str) -> StagePlan:
    """A full CLIP: its image features of ``frames`` frames and its text features of one caption (77 tokens,
    the most CLIP reads)."""
    import torch
    import transformers

    config, source = tower_config(model)
    with torch.device("meta"):
        clip = transformers.CLIPModel(config).eval()
    size, tokens = config.vision_config.image_size, config.text_config.max_position_embeddings
    pixels = torch.empty(frames, 3, size, size, device="meta")
    ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
    flops = _count(lambda: clip.get_image_features(pixel_values=pixels)) + _count(
        lambda: clip.get_text_features(input_ids=ids)
    )
    params = _params(clip)
    plan = StagePlan("caption_match", f"CLIPModel ({human_count(params)} params; {model})", params)
    plan.flops_per_clip = flops
    plan.fact("architecture", f"CLIPModel: vision {_describe(config.vision_config)}", source)
    plan.fact(
        "input", f"{frames}x3x{size}x{size} + {tokens} tokens", "filters.caption_match.frames; CLIP's 77"
    )
    plan.fact("FLOPs per clip", human_count(flops), COUNTED)
    _gpu(plan, params, device, dtype)
    return plan


def _gpu(plan: StagePlan, params: int, device: str, dtype: str) -> None:
    if device.startswith("cuda"):
        plan.gpu_bytes = params * _DTYPE_BYTES[dtype]
        plan.fact(
            "GPU memory", human_bytes(plan.gpu_bytes), f"weights at {dtype} only: activations not measured"
        )
    plan.notes.append("built on the meta device only: no memory measured here, activations not estimated")


def _count(run: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        run()
    return float(counter.get_total_flops())


def _params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _describe(config: Any) -> str:
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "patch_size")
    return ", ".join(f"{k} {getattr(config, k)}" for k in keys)
