"""The encode stage of ``dataengine plan``: the recipe's VAE at its real architecture (random weights), one
clip of the latent view's real shape encoded through ``VAE.encode`` on this CPU in float32; and the helpers
the other plan modules share (published tables, stored bytes, the measuring worker's memory settings).

A VAE's configuration comes from its ``builtin:``/local ``config.json``, or for a hub id from a small table
of its published values (``PUBLISHED_VAES``, with its source; a test checks it against the class defaults).

The DiT reads "latent shape" (``16x21x60x104``: C x T' x H' x W') and "latent channels" (``fact_shape``).

The Wan VAE costs ~2.7 TFLOP per 480 x 832 frame (~40 s a frame on 2 cores here), so a long clip is
measured on fewer frames (``frames_measured``). Wan encodes the first frame, then chunk by chunk of
``temporal_compression`` frames with a feature cache, so past the third call (the first with a full cache) its
peak grows only by the clip ``VAE.encode`` holds: the uint8 frames and two float copies (``_CLIP_COPIES``).
Measured here at 120 x 208 (``Meter``'s encode peak minus that clip): 384 MB for 5 frames (the cache
filling), 425.7, 426.1 and 426.2 MB for 9, 17 and 33 frames.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dataengine.config import ConfigError
from dataengine.encode.tiny_vae import resolve_vae
from dataengine.encode.vae import VAEConfig
from dataengine.plan import BudgetError, Meter, StagePlan, human_bytes, human_count, measure_isolated
from dataengine.stages.decode import ViewConfig
from pipelines.recipes import RecipeConfig


class Published(NamedTuple):
    config: dict[str, Any]  # a model's published config.json values (keys the library fills in left out)
    source: str  # where they were read


WAN21_VAE = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"

# Keyed by (model, subfolder).
PUBLISHED_VAES: dict[tuple[str, str | None], Published] = {
    (WAN21_VAE, "vae"): Published(
        {
            "_class_name": "AutoencoderKLWan", "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4],
            "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [False, True, True],
            "dropout": 0.0, "is_residual": False, "in_channels": 3, "out_channels": 3, "patch_size": None,
            "scale_factor_spatial": 8, "scale_factor_temporal": 4,
            "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                             0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
            "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                            3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916],
        },
        f"huggingface.co/{WAN21_VAE}/vae/config.json (= diffusers AutoencoderKLWan defaults)",
    ),
}  # fmt: skip

# Bytes per pixel-channel of the clip ``VAE.encode`` holds while the model runs: the uint8 frames and two
# float copies (x_BTHWC and its contiguous x_BCTHW) at the model's dtype (float32 here).
_CLIP_COPIES = 1 + 2 * 4
_VAE_CLASSES = {"wan": "AutoencoderKLWan", "ltx": "AutoencoderKLLTXVideo",
                "cogvideox": "AutoencoderKLCogVideoX", "kl": "AutoencoderKL"}  # fmt: skip
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_SOURCE_FPS = 30.0  # a view at the source's own rate (fps=None) is planned at this rate
_SOURCE_SIZE = (1920, 1080)  # a view that is not a fixed crop is planned for a 1080p landscape source
HERE, COUNTED = "measured here", "torch.utils.flop_counter.FlopCounterMode on the meta device"
_NPY_HEADER = 128  # np.save's version 1.0 header of a small array: magic, dict, padding to 64-byte alignment


def fact_shape(plan: StagePlan, name: str) -> tuple[int, ...]:
    """A shape Fact (``"16x21x60x104"``) or a count Fact (``"128"``) as integers."""
    for fact in plan.facts:
        if fact.name == name:
            return tuple(int(v) for v in fact.value.split("x"))
    raise KeyError(f"{plan.stage} plan has no fact {name!r}")


def npy_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of a ``.npy`` sample member as the shard writer stores it: a 1.0 header and the raw array."""
    return _NPY_HEADER + math.prod(shape) * itemsize


# -------------------------------------------------------------------------------------------------------- vae
def latent_view(recipe: RecipeConfig) -> tuple[str, int, int, int, list[str]]:
    """The encoded view's (name, frames, height, width) for the recipe's longest clip, and assumptions made.

    Raises:
        BudgetError: the encoder's view is not decoded.
    """
    name = recipe.encode.view
    view: ViewConfig | None = recipe.decode.views.get(name)
    if view is None:
        raise BudgetError(
            "encode", "encode.view", f"view {name!r} is not decoded (views: {sorted(recipe.decode.views)})",
            f"encode.view=<one of {sorted(recipe.decode.views)}> or add decode.views.{name}",
        )  # fmt: skip
    notes = []
    fps = view.fps
    if fps is None:
        fps = _SOURCE_FPS
        notes.append(f"view {name!r} keeps the source's rate: planned at {_SOURCE_FPS:g} fps")
    frames = math.ceil(recipe.split.max_clip_s * fps - 1e-6)
    if view.max_frames is not None:
        frames = min(frames, view.max_frames)
    if view.resize == "crop":
        assert view.width is not None and view.height is not None
        return name, frames, view.height, view.width, notes
    w, h, m = *_SOURCE_SIZE, view.multiple_of if view.resize != "none" else 1
    scale = {"short_side": (view.size or 0) / min(w, h), "none": 1.0}.get(
        view.resize, min((view.width or 0) / w, (view.height or 0) / h)
    )
    width, height = max(m, round(w * scale / m) * m), max(m, round(h * scale / m) * m)
    notes.append(f"view {name!r} is resize={view.resize}: planned for a {w}x{h} source ({width}x{height})")
    return name, frames, height, width, notes


def vae_architecture(config: VAEConfig) -> tuple[dict[str, Any], str]:
    """The VAE's configuration (a published table, or a ``builtin:``/local folder's ``config.json``) and where
    it was read.

    Raises:
        ConfigError: a hub id with no published table here (hub files cannot be read).
    """
    import diffusers

    published = PUBLISHED_VAES.get((config.model, config.subfolder))
    if published is not None:
        return dict(published.config), published.source
    path = Path(resolve_vae(config.model, config.kind))
    subfolder = config.subfolder
    if subfolder is None and not (path / "config.json").is_file() and (path / "vae/config.json").is_file():
        subfolder = "vae"
    folder = path / subfolder if subfolder else path
    if not (folder / "config.json").is_file():
        known = ", ".join(f"{m} ({s})" for m, s in PUBLISHED_VAES)
        raise ConfigError(
            f"encode.vae.model={config.model!r}: no local config.json and no published configuration known "
            f"here (known: {known}); give a local folder or add its config.json values to PUBLISHED_VAES"
        )
    cls = getattr(diffusers, _VAE_CLASSES[config.kind])
    loaded: dict[str, Any] = dict(cls.load_config(str(folder)))
    return loaded, f"{config.model} -> {folder}/config.json"


def plan_encode(
    recipe: RecipeConfig, frames_measured: int | None = None, max_measured_flops: float = 12e12
) -> StagePlan:
    """The VAE stage: one clip of the latent view encoded here (float32, CPU, random weights), the latent
    shape by the VAE's rules, its parameters, peak memory here and on the GPU, FLOPs and bytes per clip.

    Args:
        recipe: the recipe to plan.
        frames_measured: frames encoded here (fitted to the VAE's rule); None: the most within
            ``max_measured_flops`` but at least one chunk after the first frame (causal VAEs), or the clip.
        max_measured_flops: the counted FLOPs a measured encode may take (~70 GFLOP/s here).

    Raises:
        BudgetError: a latent view the VAE cannot encode (the view is missing, its size is not a multiple of
            the VAE's spatial compression, it has no frame to encode).
    """
    import diffusers

    from dataengine.encode.vae import VAE

    config = recipe.encode.vae
    arch, source = vae_architecture(config)
    class_name = str(arch.get("_class_name") or _VAE_CLASSES[config.kind])
    meta = on_meta(lambda: getattr(diffusers, class_name).from_config(arch))
    vae = VAE(meta, config)
    view, frames, height, width, notes = latent_view(recipe)
    s, step = vae.spatial_compression, vae.temporal_compression
    for side, size in (("width", width), ("height", height)):
        if size % s:
            lower, upper = max(s, size // s * s), (size // s + 1) * s
            fix = upper if upper - size <= size - lower else lower
            raise BudgetError(
                "encode", f"decode.views.{view}.{side}",
                f"{width}x{height} frames: {vae.info['class']} needs multiples of {s} (spatial compression)",
                f"decode.views.{view}.{side}={fix}",
            )  # fmt: skip
    used = vae.frames_used(frames)
    if used < 1:
        raise BudgetError(
            "encode", f"decode.views.{view}.max_frames", f"{frames} frames leave none to encode",
            f"decode.views.{view}.max_frames={1 + step}",
        )  # fmt: skip
    params = sum(p.numel() for p in meta.parameters())
    encoder_params = sum(p.numel() for p in meta.encoder.parameters()) if hasattr(meta, "encoder") else params
    flops_full, latent_meta = _count_encode(vae, used, height, width)
    latent_shape = _latent_rule(vae, used, height, width)
    if latent_shape != latent_meta:  # the rule and the architecture disagree: report what the model gives
        notes.append(
            f"the rule gives {shape_str(latent_shape)}, the architecture {shape_str(latent_meta)}: reported"
        )
        latent_shape = latent_meta
    n = frames_measured or _frames_to_measure(vae, used, height, width, max_measured_flops)
    n = vae.frames_used(min(n, used))
    flops_n = flops_full if n == used else _count_encode(vae, n, height, width)[0]
    dump = config.model_dump()
    measured, _ = measure_isolated(_encode_worker, class_name, arch, dump, n, height, width)
    growth = (used - n) * height * width * 3 * _CLIP_COPIES if vae.is_causal_video else 0
    if not vae.is_causal_video:  # per-frame VAE: activations of every frame at once
        growth = round(measured["run"] * (used / n - 1))
    run_full = measured["run"] + growth
    seconds_full = measured["seconds"] * flops_full / max(flops_n, 1.0)

    plan = StagePlan(
        "encode", f"{class_name} ({human_count(params)} params; {config.model})", params,
        peak_bytes_here=measured["peak"], flops_per_clip=flops_full,
        bytes_out_per_clip=npy_bytes(latent_shape, 2), notes=notes,
    )  # fmt: skip
    rule = f"frame_rule={config.frame_rule}: 1 + k*{step}" if vae.is_causal_video else "kl: any count"
    stored = f"float16 {shape_str(latent_shape)} = {human_bytes(npy_bytes(latent_shape, 2))}"
    for name, value, said in [
        ("architecture", class_name, source),
        ("encoder params", human_count(encoder_params), "counted on the meta device"),
        (
            "latent view",
            f"{frames}x{height}x{width}x3",
            f"decode.views.{view}, a {recipe.split.max_clip_s:g} s clip",
        ),
        ("frames encoded", used, rule),
        ("compression", f"{step}x{s}x{s} (t x h x w)", source),
        (
            "latent shape",
            shape_str(latent_shape),
            f"C x (1 + (T-1)/{step}) x H/{s} x W/{s} of {used}x{height}x{width}",
        ),
        ("latent channels", latent_shape[0], source),
        ("latents stored", stored, "latents.npy: raw float16 C x T x H x W, npy header (dataengine.samples)"),
        ("frames measured", n, f"{HERE} (float32, CPU, random weights)"),
        ("latent shape measured", shape_str(tuple(measured["latent_shape"])), HERE),
        ("time here", f"{measured['seconds']:.1f} s for {n} frames", HERE),
        ("peak here", human_bytes(measured["peak"]), f"{HERE}: RSS over the imports, {n} frames"),
        ("model resident here", human_bytes(measured["resident"]), f"{HERE}: RSS of the built model"),
        (
            "encode peak here",
            human_bytes(measured["run"]),
            f"{HERE}: what encoding added to it (clip + activations)",
        ),
        ("FLOPs per clip", human_count(flops_full), f"{COUNTED}, the full clip, attention as matmuls"),
    ]:
        plan.fact(name, value, said)
    if n != used:
        copies = f"{used - n} frames x H x W x 3 x {_CLIP_COPIES} B (the clip VAE.encode holds)"
        plan.fact("time here, full clip", f"{seconds_full:.0f} s", f"derived: {n}-frame time x FLOPs ratio")
        plan.fact("encode peak here, full clip", human_bytes(run_full), f"derived: measured + {copies}")
        plan.notes.append(
            f"measured on {n} of {used} frames ({human_count(flops_n)} of {human_count(flops_full)} FLOPs): "
            "the causal encoder runs chunk by chunk with a feature cache, so activations do not grow with "
            f"the frame count; the latent shape of {used} frames is derived by the rule"
        )
        if vae.is_causal_video and n < 1 + 2 * step:
            plan.notes.append(f"fewer than {1 + 2 * step} frames measured: no call with a full feature cache,"
                              " the encode peak is below the steady one")  # fmt: skip
    if config.device.startswith("cuda"):
        size = DTYPE_BYTES[config.dtype]
        activations = run_full * size / 4 * config.batch_size
        plan.gpu_bytes = round(params * size + activations)
        how = f"weights at {config.dtype} + encode peak (full clip) x {size}/4 x batch_size"
        plan.fact(
            "GPU memory", human_bytes(plan.gpu_bytes), f"estimate: {how} {config.batch_size}; no CUDA context"
        )
    else:
        plan.notes.append(f"encode.vae.device={config.device}: no GPU estimate")
    return plan


def _encode_worker(
    class_name: str, arch: dict[str, Any], vae_config: dict[str, Any], frames: int, height: int, width: int
) -> dict[str, Any]:
    """In a spawned process: build the VAE from ``arch`` (random weights), encode one random clip through
    ``VAE.encode`` in float32 on the CPU; the time and the ``Meter``'s numbers."""
    import diffusers
    import torch

    from dataengine.encode.vae import VAE

    config = VAEConfig.model_validate({**vae_config, "device": "cpu", "dtype": "float32", "batch_size": 1})
    torch.manual_seed(0)
    build = getattr(diffusers, class_name).from_config
    on_meta(lambda: build(arch))  # every lazy import done before the baseline
    meter = Meter()
    vae = VAE(build(arch).eval(), config)
    meter.built()
    clip = np.random.default_rng(0).integers(0, 256, (1, frames, height, width, 3), dtype=np.uint8)
    start = time.perf_counter()
    latents = vae.encode(clip)
    seconds = time.perf_counter() - start
    return {"latent_shape": list(latents.shape[1:]), "seconds": seconds, **meter.done()}


def _frames_to_measure(vae: Any, used: int, height: int, width: int, budget: float) -> int:
    """The most frames within ``budget`` FLOPs, at least ``1 + 2 * step``: the third call of a causal
    encoder is the first with a full feature cache, its peak the steady one (the second's is lower)."""
    if not vae.is_causal_video:
        return used
    step = vae.temporal_compression
    n = min(used, 1 + 2 * step)
    while n + step <= used and _count_encode(vae, n + step, height, width)[0] <= budget:
        n += step
    return n


def _count_encode(vae: Any, frames: int, height: int, width: int) -> tuple[float, tuple[int, ...]]:
    """FLOPs of encoding one clip (FlopCounterMode on the meta device: shapes only) and the latent shape."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.empty(1, 3, frames, height, width, device="meta")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        z = vae._encode(x)
    return float(counter.get_total_flops()), tuple(z.shape[1:])


def _latent_rule(vae: Any, frames: int, height: int, width: int) -> tuple[int, ...]:
    s, step = vae.spatial_compression, vae.temporal_compression
    t = 1 + (frames - 1) // step if vae.is_causal_video else frames
    return (vae.info["latent_channels"], t, height // s, width // s)


def on_meta(build: Any) -> Any:
    import torch

    with torch.device("meta"):
        return build().eval()


def shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(v) for v in shape)
