"""Where a caption model comes from: a local folder, a hub id, or a model this project builds itself.

``builtin:tiny-qwen2_5_vl`` and ``builtin:tiny-qwen3_vl`` are randomly initialised tiny VLMs built offline
(see ``tiny_vlm.py``) and cached on disk; they make the whole loop run on a machine with no GPU and no hub,
with nonsense captions. ``builtin:world-captioner`` is a trained one shipped in ``dataengine/assets/``: a
Qwen3-VL student distilled from the synthetic world's ground truth (``dataengine distill``); it states
about 95 of every 100 facts of a world clip (motion and size are its weakest; ``fidelity.json`` next to its
weights) and knows nothing outside that world. A local folder must hold a ``config.json``; anything else is
passed to the loaders unchanged, as a hub id.
"""

from __future__ import annotations

from pathlib import Path

from dataengine.caption.tiny_vlm import TinyVLMConfig, ensure_tiny_vlm
from dataengine.config import ConfigError

BUILTIN = "builtin:"
BUILTIN_MODELS = {
    "tiny-qwen2_5_vl": TinyVLMConfig(family="qwen2_5_vl"),
    "tiny-qwen3_vl": TinyVLMConfig(family="qwen3_vl"),
}
ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED = {"world-captioner": ASSETS / "world-captioner"}  # name -> packaged folder
LOCAL_PREFIXES = ("/", "./", "../", "~")  # a model named like this is a path, never a hub id
REBUILD = {
    "world-captioner": "dataengine rebuild world-captioner --out DIR, then copy DIR's last stage there "
    "(docs/lab-notes/2026-12-06-captioner.md)"
}


def resolve_model(model: str) -> str:
    """A path or hub id the loaders accept; ``builtin:`` names are built (once) and cached.

    Raises:
        ConfigError: an unknown ``builtin:`` name (the message lists the known ones), or a local path
            (absolute, ``./``, ``../`` or ``~``) with no model folder there.
    """
    if not model.startswith(BUILTIN):
        if model.startswith(LOCAL_PREFIXES) and not (Path(model).expanduser() / "config.json").is_file():
            raise ConfigError(
                f"no model folder at {model!r} (a local model is a folder with config.json, "
                "e.g. the --out of `dataengine distill`; a hub id is written org/name)"
            )
        return model
    name = model.removeprefix(BUILTIN)
    if name in SHIPPED:
        if not (SHIPPED[name] / "config.json").is_file():
            raise ConfigError(f"{model!r}: {SHIPPED[name]} is missing; rebuild it with `{REBUILD[name]}`")
        return str(SHIPPED[name])
    if name not in BUILTIN_MODELS:
        known = ", ".join(BUILTIN + n for n in [*BUILTIN_MODELS, *SHIPPED])
        raise ConfigError(f"unknown built-in model {model!r}; known: {known}")
    return str(ensure_tiny_vlm(config=BUILTIN_MODELS[name]))
