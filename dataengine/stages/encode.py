"""Encode: captioned clips -> raw VAE latents of one decoded view.

CaptionedClip --> EncodedClip | Failure(stage="encode"). Each clip's view is fitted to the frame counts the
VAE takes (``VAEConfig.frame_rule``), clips of one fitted shape are encoded together, ``batch_size`` at a
time. A clip without the view, with no frames, or with a frame size the VAE cannot divide becomes a
``Failure``; anything else that goes wrong is a bug and raises.

Legend: ``latents_CTHW`` is float16, C latent channels x T latent frames x H x W latent pixels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from dataengine.config import Config
from dataengine.encode.vae import VAE, VAEConfig, load_vae
from dataengine.records import CaptionedClip, EncodedClip, Failure
from dataengine.stages.base import Stage


class EncodeConfig(Config):
    vae: VAEConfig
    view: str = Field("latents", description="which decoded view is encoded")


class EncodeStage(Stage[CaptionedClip, EncodedClip]):
    name = "encode"
    input_type = CaptionedClip
    output_type = EncodedClip
    config: EncodeConfig

    def __init__(self, config: EncodeConfig) -> None:
        super().__init__(config)
        self._vae: VAE | None = None

    @property
    def vae(self) -> VAE:
        if self._vae is None:
            raise RuntimeError("EncodeStage.setup() has not been called")
        return self._vae

    def setup(self) -> None:
        if self._vae is None:
            self._vae = load_vae(self.config.vae)

    def teardown(self) -> None:
        self._vae = None

    def process_batch(self, batch: Sequence[CaptionedClip]) -> list[EncodedClip | Failure]:
        results: list[EncodedClip | Failure | None] = [None] * len(batch)
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = defaultdict(list)
        for i, item in enumerate(batch):
            fitted = self._fitted(item)
            if isinstance(fitted, Failure):
                results[i] = fitted
            else:
                groups[fitted.shape].append((i, fitted))
        for members in groups.values():
            latents_BCTHW = self.vae.encode(np.stack([frames for _, frames in members]))
            for (i, frames), latents_CTHW in zip(members, latents_BCTHW, strict=True):
                results[i] = EncodedClip(
                    captioned=batch[i],
                    latents_CTHW=latents_CTHW,
                    vae=self.vae.info,
                    frames_used=len(frames),
                    frame_rule=self.vae.info["frame_rule"],
                )
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def _fitted(self, item: CaptionedClip) -> np.ndarray | Failure:
        """The view's frames fitted to the VAE, or why the clip cannot be encoded."""
        view = self.config.view
        frames = item.decoded.views.get(view)
        if frames is None:
            have = ", ".join(sorted(item.decoded.views)) or "none"
            return Failure.of(item.clip, "encode", f"no decoded view {view!r} (views: {have})")
        t, h, w, _ = frames.shape
        if self.vae.frames_used(t) < 1:
            return Failure.of(item.clip, "encode", f"view {view!r} has {t} frames; at least 1 is needed")
        s = self.vae.spatial_compression
        if h % s or w % s:
            reason = f"view {view!r} is {w}x{h}; {self.vae.info['class']} needs multiples of {s}"
            return Failure.of(item.clip, "encode", reason)
        return self.vae.fit(frames.frames_THWC)
