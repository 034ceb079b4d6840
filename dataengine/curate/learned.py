"""Learned clip scorers, as plugins for GPU recipes (the CPU default runs neither): both need real weights.

Legend: ``frames_THWC`` is uint8 RGB (T,H,W,3), one clip's caption view; ``emb_ND`` holds N unit vectors.

``AestheticScorer``  LAION-aesthetic style: a small MLP head on L2-normalised CLIP image embeddings
                     (``CLIPVisionModelWithProjection``), scored on ``frames`` evenly spaced frames, averaged.
                     The head is a stack of ``Linear`` layers with no activation between them, e.g.
                     768 -> 1024 -> 128 -> 64 -> 16 -> 1 on ViT-L/14 (LAION's improved-aesthetic-predictor
                     is exactly that at inference: its Dropouts do nothing in eval). ``save_head`` writes one
                     from ``build_head`` or converts LAION's state dict (``layers.0.weight``, ...).
``CaptionMatcher``   caption-to-clip agreement: cosine similarity of a CLIP model's text embedding of the
                     caption and the normalised mean of its image embeddings of the clip's frames, in [-1, 1].
                     CLIP reads at most 77 tokens (``max_position_embeddings``): longer text is truncated, so
                     pass the short caption where there is one; a dense caption is judged by its first lines.

Both load through ``model_cache.loading``: a model or head that cannot be read is a ``ModelUnavailableError``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from dataengine import model_cache
from dataengine.config import Config, ConfigError
from dataengine.curate.embed import Dtype, ImageTower, checked, frame_indices, pool, unit_rows

if TYPE_CHECKING:
    import torch

HEAD_FILE = "aesthetic_head.safetensors"
LAION_DIMS = (768, 1024, 128, 64, 16, 1)
_LAYER_KEY = re.compile(r"^(?:(.*)\.)?(\d+)\.(weight|bias)$")


class AestheticConfig(Config):
    model: str = Field(description="the CLIP image tower the head was trained on: hub id or local folder")
    head: str = Field(description=f"the head's weights: a .safetensors file, or a folder holding {HEAD_FILE}")
    frames: int = Field(4, ge=1, description="evenly spaced frames scored per clip (the score is their mean)")
    min_score: float | None = Field(None, description="clips scoring below are dropped; None: score only")
    device: str = Field("cpu", description="torch device")
    dtype: Dtype = Field("float32", description="torch dtype of the tower (the head runs in float32)")
    batch_size: int = Field(16, ge=1, description="clips per forward pass")


class CaptionMatchConfig(Config):
    model: str = Field(description="a CLIP model with text and image towers: hub id or local folder")
    frames: int = Field(4, ge=1, description="evenly spaced frames whose mean embedding meets the caption")
    min_score: float | None = Field(None, description="clips matching below are dropped; None: score only")
    device: str = Field("cpu", description="torch device")
    dtype: Dtype = Field("float32", description="torch dtype")
    batch_size: int = Field(16, ge=1, description="clips per forward pass")


def keeps(min_score: float | None, score: float) -> bool:
    """Whether a clip with ``score`` passes ``min_score`` (None keeps everything)."""
    return min_score is None or score >= min_score


# ------------------------------------------------------------------------------------------------- aesthetic
class AestheticScorer:
    """Cheap constructor; ``setup()`` loads the tower and the head once; ``score()`` batches.

    Args:
        config: the tower, the head and how many frames to score.
        key: the config section, for the message of a model or head that cannot be loaded.
    """

    def __init__(self, config: AestheticConfig, key: str = "filters.aesthetic") -> None:
        self.config = config
        self.key = key
        self._tower: ImageTower | None = None
        self._head: Any = None

    def setup(self) -> None:
        """Load the tower and the head.

        Raises:
            ModelUnavailableError: the tower or the head cannot be read.
            ConfigError: the head does not take the tower's embedding or does not end in one output.
        """
        cfg = self.config
        tower = ImageTower.load("clip", cfg.model, cfg.device, cfg.dtype, f"{self.key}.model")
        with model_cache.loading(cfg.head, f"{self.key}.head"):
            head = load_head(cfg.head)
        if head[0].in_features != tower.dim:
            raise ConfigError(
                f"head {cfg.head!r} takes {head[0].in_features}-d input; {cfg.model!r} gives {tower.dim}"
            )
        self._tower, self._head = tower, head.to(cfg.device).eval()

    def teardown(self) -> None:
        self._tower = self._head = None

    def score(self, clips: Sequence[np.ndarray]) -> list[float]:
        """One score per clip: the head's mean over its ``frames`` evenly spaced frames.

        Raises:
            ValueError: a clip that is not uint8 (T,H,W,3) with T >= 1.
            RuntimeError: before ``setup()``.
        """
        import torch

        if self._tower is None:
            raise RuntimeError("AestheticScorer: call setup() before score()")
        scores: list[float] = []
        for i in range(0, len(clips), self.config.batch_size):
            for emb_ND in self._tower.embed_frames(clips[i : i + self.config.batch_size], self.config.frames):
                with torch.inference_mode():
                    out = self._head(torch.from_numpy(emb_ND).to(self.config.device))
                scores.append(float(out.float().mean()))
        return scores

    def keep(self, score: float) -> bool:
        return keeps(self.config.min_score, score)


def build_head(dims: Sequence[int] = LAION_DIMS) -> torch.nn.Sequential:
    """A fresh head: ``Linear`` layers ``dims[0] -> dims[1] -> ... -> 1``, no activations (LAION's layout).

    Raises:
        ConfigError: fewer than two sizes, or a last size other than 1.
    """
    import torch

    if len(dims) < 2 or dims[-1] != 1:
        raise ConfigError(f"head dims {list(dims)} must name an input size and end in 1")
    return torch.nn.Sequential(*(torch.nn.Linear(a, b) for a, b in itertools.pairwise(dims)))


def save_head(path: str | Path, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Write a head's weights as safetensors, renumbered to ``build_head``'s keys; returns the file.

    Args:
        path: a ``.safetensors`` file, or a folder (created; the file is ``HEAD_FILE`` inside).
        state_dict: ``build_head(...).state_dict()``, or any stack of linear layers keyed
            ``[prefix.]<index>.weight`` / ``.bias`` (LAION's ``layers.0.weight``, ``layers.2.weight``, ...).

    Raises:
        ConfigError: the layers do not chain (each input size the previous output size) or end in one output.
    """
    from safetensors.torch import save_file

    layers = _linear_layers(state_dict)
    target = Path(path)
    if target.suffix != ".safetensors":
        target.mkdir(parents=True, exist_ok=True)
        target = target / HEAD_FILE
    tensors = {f"{i}.{name}": t.detach().float().contiguous() for i, layer in enumerate(layers)
               for name, t in layer.items()}  # fmt: skip
    save_file(tensors, str(target))
    return target


def load_head(path: str | Path) -> torch.nn.Sequential:
    """The head saved at ``path`` (a safetensors file, or a folder holding ``HEAD_FILE``), float32.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: the file holds no chain of linear layers ending in one output.
    """
    from safetensors.torch import load_file

    target = Path(path)
    if target.is_dir():
        target = target / HEAD_FILE
    if not target.is_file():
        raise FileNotFoundError(f"no aesthetic head at {target}")
    layers = _linear_layers(load_file(str(target)))
    head = build_head([layers[0]["weight"].shape[1], *(layer["weight"].shape[0] for layer in layers)])
    head.load_state_dict({f"{i}.{name}": t for i, layer in enumerate(layers) for name, t in layer.items()})
    return head


def _linear_layers(state_dict: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    found: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _LAYER_KEY.match(key)
        if match is None:
            raise ConfigError(f"head key {key!r} is not [prefix.]<index>.weight or .bias of a linear layer")
        found.setdefault((match[1] or "", int(match[2])), {})[match[3]] = tensor
    layers = [found[k] for k in sorted(found)]
    shapes = [tuple(layer["weight"].shape) for layer in layers if set(layer) == {"weight", "bias"}]
    chained = all(b[1] == a[0] for a, b in itertools.pairwise(shapes))
    if not layers or len(shapes) != len(layers) or any(len(s) != 2 for s in shapes) or not chained:
        raise ConfigError(f"the head's layers {shapes} are not a chain of linear layers with weight and bias")
    if shapes[-1][0] != 1:
        raise ConfigError(f"the head's last layer gives {shapes[-1][0]} outputs, not 1")
    return layers


# --------------------------------------------------------------------------------------------- caption match
class CaptionMatcher:
    """Cheap constructor; ``setup()`` loads the CLIP model, its processor and tokenizer once.

    Args:
        config: the CLIP model and how many frames to pool.
        key: the config key naming ``model``, for the message of a model that cannot be loaded.
    """

    def __init__(self, config: CaptionMatchConfig, key: str = "filters.caption_match.model") -> None:
        self.config = config
        self.key = key
        self._model: Any = None
        self._processor: Any = None
        self._tokenizer: Any = None

    def setup(self) -> None:
        """Load the model, its image processor and its tokenizer.

        Raises:
            ModelUnavailableError: the model cannot be read from a folder or a hub.
            ConfigError: the folder holds another kind of model than CLIP.
        """
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPImageProcessor

        cfg = self.config
        with model_cache.loading(cfg.model, self.key):
            kind = AutoConfig.from_pretrained(cfg.model).model_type
            if kind != "clip":
                raise ConfigError(f"{cfg.model!r} holds a {kind} model, not a CLIP model with both towers")
            self._processor = CLIPImageProcessor.from_pretrained(cfg.model)
            self._tokenizer = AutoTokenizer.from_pretrained(cfg.model)
            model = AutoModel.from_pretrained(cfg.model, dtype=getattr(torch, cfg.dtype))
        self._model = model.to(cfg.device).eval()

    def teardown(self) -> None:
        self._model = self._processor = self._tokenizer = None

    def score(self, clips: Sequence[np.ndarray], captions: Sequence[str]) -> list[float]:
        """Cosine similarity in [-1, 1] of each clip's pooled image embedding and its caption's text's.

        Raises:
            ValueError: unequal numbers of clips and captions, or a clip that is not uint8 (T,H,W,3), T >= 1.
            RuntimeError: before ``setup()``.
        """
        if self._model is None:
            raise RuntimeError("CaptionMatcher: call setup() before score()")
        if len(clips) != len(captions):
            raise ValueError(f"{len(clips)} clips but {len(captions)} captions")
        n = self.config.batch_size
        return [
            s for i in range(0, len(clips), n) for s in self._batch(clips[i : i + n], captions[i : i + n])
        ]

    def _batch(self, clips: Sequence[np.ndarray], captions: Sequence[str]) -> list[float]:
        picked = [c[frame_indices(len(c), self.config.frames)] for c in map(checked, clips)]
        images = unit_rows(self._features("image", [f for group in picked for f in group]))
        bounds = np.cumsum([0, *map(len, picked)])
        clip_ND = np.stack([pool(images[a:b]) for a, b in itertools.pairwise(bounds)])
        text_ND = unit_rows(self._features("text", list(captions)))
        return [float(np.clip(s, -1.0, 1.0)) for s in (clip_ND * text_ND).sum(1)]

    def _features(self, tower: str, inputs: list[Any]) -> np.ndarray:
        import torch

        model, device = self._model, self.config.device
        with torch.inference_mode():
            if tower == "image":
                pixels = self._processor(images=inputs, return_tensors="pt")["pixel_values"]
                out = model.get_image_features(pixel_values=pixels.to(device, model.dtype))
            else:
                limit = model.config.text_config.max_position_embeddings  # 77 for CLIP
                tokens = self._tokenizer(inputs, padding=True, truncation=True, max_length=limit,
                                         return_tensors="pt").to(device)  # fmt: skip
                out = model.get_text_features(**tokens)
        return _tensor(out).float().cpu().numpy()


def _tensor(out: Any) -> torch.Tensor:
    """The projected features: transformers returns a tensor, or (5.x) an output holding ``pooler_output``."""
    return out if hasattr(out, "float") else out.pooler_output
