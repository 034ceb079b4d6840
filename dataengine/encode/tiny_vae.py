"""Tiny, randomly initialised video autoencoders built offline: real diffusers classes, meaningless latents.

One preset per kind keeps the released architecture and compression of its family (Wan 2.1: 8x spatial,
4x temporal; LTX-Video 0.9: 32x / 8x; CogVideoX: 8x / 4x; an SD3-style ``AutoencoderKL``: 8x, per frame)
with a few channels per block, so encoding 9-17 frames of 64 x 64 takes tens of milliseconds on a CPU.
Normalisation stats are set to distinct non-trivial values so tests can check they are carried through.

``ensure_tiny_vae`` keeps one ``save_pretrained`` folder per preset in an on-disk cache (built in a temporary
sibling folder, then renamed: folders appear only complete); ``resolve_vae`` maps ``builtin:tiny-<kind>``
to that folder, ``builtin:<name>`` of ``SHIPPED`` to a trained folder packaged in ``dataengine/assets/``
(meaningful latents: see ``trainer.vae``), and passes anything else through.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from dataengine import model_cache
from dataengine.config import ConfigError
from dataengine.model_cache import build_folder, cache_key, cached_folder

VAEKind = Literal["wan", "ltx", "cogvideox", "kl"]

BUILTIN = "builtin:"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
# name -> (kind, packaged folder): VAEs the project trained itself (``dataengine train-vae``)
SHIPPED: dict[str, tuple[VAEKind, Path]] = {"world-vae": ("wan", ASSETS / "world-vae")}
_BUILDER_VERSION = "1"  # part of the cache key: bump it when what a build writes changes

# kind -> (diffusers class name, constructor kwargs)
TINY_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "wan": ("AutoencoderKLWan", {
        "base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1,
        "temperal_downsample": [False, True, True],
        "latents_mean": [0.1, -0.2, 0.3, 0.05], "latents_std": [1.5, 2.0, 0.5, 1.25],
    }),
    "ltx": ("AutoencoderKLLTXVideo", {
        "latent_channels": 8, "block_out_channels": [8, 16, 32, 32],
        "decoder_block_out_channels": [8, 16, 32, 32], "layers_per_block": [1, 1, 1, 1, 1],
        "decoder_layers_per_block": [1, 1, 1, 1, 1],
    }),
    "cogvideox": ("AutoencoderKLCogVideoX", {
        "block_out_channels": [8, 16, 16, 32], "latent_channels": 4, "layers_per_block": 1,
        "norm_num_groups": 4, "sample_height": 64, "sample_width": 64,
    }),
    "kl": ("AutoencoderKL", {
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [8, 16, 16, 16], "latent_channels": 4, "norm_num_groups": 4,
        "sample_size": 64, "scaling_factor": 1.5035, "shift_factor": 0.0609,
        "use_quant_conv": False, "use_post_quant_conv": False,
    }),
}  # fmt: skip


def resolve_vae(model: str, kind: VAEKind) -> str:
    """A path or hub id ``from_pretrained`` accepts; ``builtin:tiny-<kind>`` is built (once) and cached,
    ``builtin:world-vae`` is the packaged folder.

    Raises:
        ConfigError: an unknown ``builtin:`` name, one of another kind than ``kind``, or a shipped folder
            missing from the installation.
    """
    if not model.startswith(BUILTIN):
        return model
    name = model.removeprefix(BUILTIN)
    if name in SHIPPED and SHIPPED[name][0] == kind:
        folder = SHIPPED[name][1]
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"{model!r}: {folder} is missing; rebuild it with `dataengine rebuild world-vae --out DIR` "
                "and copy DIR's last stage there"
            )
        return str(folder)
    if name != f"tiny-{kind}":
        names = [f"tiny-{k}" for k in TINY_PRESETS] + [f"{n} (kind {k})" for n, (k, _) in SHIPPED.items()]
        known = ", ".join(BUILTIN + n for n in names)
        raise ConfigError(f"{model!r} is not a built-in VAE of kind {kind!r}; known: {known}")
    return str(ensure_tiny_vae(kind))


def ensure_tiny_vae(kind: VAEKind, cache_root: Path | None = None, seed: int = 0) -> Path:
    """The cached tiny VAE of ``kind``, built only when missing; concurrent callers share one build.

    Args:
        kind: which preset.
        cache_root: the cache folder; default ``$DATAENGINE_CACHE``, else ``~/.cache/dataengine/models``.
        seed: drives the random init.

    Returns:
        ``<cache_root>/tiny-vae-<kind>-<first 12 hex digits of the preset's hash>/``, complete.
    """
    import diffusers

    recipe = json.dumps([_BUILDER_VERSION, diffusers.__version__, kind, seed, TINY_PRESETS[kind]])
    target = model_cache.cache_root(cache_root) / f"tiny-vae-{kind}-{cache_key(recipe)}"
    return cached_folder(target, lambda out: build_tiny_vae(out, kind, seed))


def build_tiny_vae(out_dir: Path, kind: VAEKind, seed: int = 0) -> Path:
    """Build the ``kind`` preset into ``out_dir`` atomically: in a temporary sibling folder, then one rename.

    Raises:
        FileExistsError: ``out_dir`` has content, before the build or (another process) by its end.
    """
    return build_folder(out_dir, lambda tmp: _build(kind, seed).save_pretrained(tmp))


def _build(kind: VAEKind, seed: int) -> Any:
    import diffusers
    import torch

    class_name, kwargs = TINY_PRESETS[kind]
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
        torch.manual_seed(seed)
        model = getattr(diffusers, class_name)(**kwargs)
        if kind == "ltx":  # its stats are buffers (zeros / ones at init), not config
            with torch.no_grad():
                model.latents_mean.uniform_(-0.5, 0.5)
                model.latents_std.uniform_(0.5, 2.0)
    return model.eval()
