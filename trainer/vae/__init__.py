"""Train a small Wan-architecture video autoencoder (``diffusers.AutoencoderKLWan``) on one CPU thread.

    dataengine train-vae --out /tmp/world-vae   # the shipped builtin:world-vae (~43 min: 2 min of data)
    dataengine train-vae --out /tmp/vae --set minutes=null --set max_steps=5 --set world_clips=8 \\
        --set footage.train_clips=0 --set footage.heldout_clips=0   # ~15 s, no download

Legend: ``frames_NTHWC`` is uint8 RGB, N clips of T frames of H x W x 3; ``x_BCTHW`` is float in [-1, 1].

``config``  ``VAETrainConfig``: the architecture (``WanArch``), footage spans, budget and optimiser settings
``data``    single-shot ``synth`` videos (320x240 at 24 fps, as the demo makes them) and spans of the sample
            footage, probed by ``ProbeStage`` and decoded by ``DecodeStage`` with the demo's ``latents`` view,
            so training sees what the encode stage sees. Clip lengths lie in ``clip_s``, whose lower end
            yields exactly ``frames`` frames (the view lowers its fps for longer clips)
``train``   the model, the loop, the measurements and ``train_vae``, the whole run
"""

from trainer.vae.config import FootageConfig, VAETrainConfig, WanArch
from trainer.vae.data import heldout_world, world_seeds
from trainer.vae.train import TrainResult, build_model, fit, heldout_psnr, train_vae

__all__ = [
    "FootageConfig",
    "TrainResult",
    "VAETrainConfig",
    "WanArch",
    "build_model",
    "fit",
    "heldout_psnr",
    "heldout_world",
    "train_vae",
    "world_seeds",
]
