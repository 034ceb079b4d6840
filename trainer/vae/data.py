"""The VAE's clips: single-shot world videos and spans of the sample footage, each probed and decoded with the
training view and held in memory as uint8 ``frames_NTHWC``; training batches are random crops of them.

Held-out world clips come from their own fixed seed, whatever ``seed`` is; held-out footage is the last
``heldout_s`` seconds of the first file.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataengine.model_cache import cache_root
from dataengine.records import Clip, Failure, Source, Video
from dataengine.stages import DecodeConfig, DecodeStage, ProbeStage
from dataengine.world.footage import sample_footage
from dataengine.world.generate import random_spec, write_video
from trainer.vae.config import VAETrainConfig

HELDOUT_SEED = 1_000_003  # held-out clips draw from (HELDOUT_SEED, stream); training ones from (seed, stream)
_WORLD, _FOOTAGE, _ORDER = 0, 1, 2  # random streams
_VIEW = "latents"
Log = Callable[[str], None]


@dataclass
class Dataset:
    """Every clip decoded once, ``frames_NTHWC`` uint8 in memory; held-out footage is empty when off."""

    train: np.ndarray
    heldout_world: np.ndarray
    heldout_footage: np.ndarray
    train_footage: int  # the last clips of ``train``
    seconds: float


def build_dataset(config: VAETrainConfig, log: Log = print) -> Dataset:
    """Training and held-out clips, each through probe + decode with ``config.view``.

    Raises:
        OSError: footage is on and could not be downloaded.
        RuntimeError: a clip failed to probe or decode (our own files: a bug or a broken ffmpeg).
    """
    t0 = time.perf_counter()
    shared = set(world_seeds(config, heldout=False)) & set(world_seeds(config, heldout=True))
    if shared:  # independent 32-bit draws: practically never
        raise RuntimeError(f"training and held-out world clips share spec seeds {sorted(shared)}")
    with tempfile.TemporaryDirectory(prefix="train-vae-") as tmp:
        rng = np.random.default_rng((config.seed, _WORLD))
        world = world_clips(config, rng, config.world_clips, Path(tmp) / "train")
        heldout = heldout_world(config, Path(tmp) / "heldout")
    footage, heldout_footage = footage_clips(config)
    seconds = time.perf_counter() - t0
    log(f"decoded {len(world)} world + {len(footage)} footage training clips, {len(heldout)} + "
        f"{len(heldout_footage)} held out, in {seconds:.0f} s")  # fmt: skip
    return Dataset(np.concatenate([world, footage]), heldout, heldout_footage, len(footage), seconds)


def world_clips(config: VAETrainConfig, rng: np.random.Generator, n: int, workdir: Path) -> np.ndarray:
    """``n`` single-shot synthetic videos drawn from ``rng``, written to ``workdir``, one whole clip each."""
    workdir.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(n):
        spec = random_spec(rng, max_shots=1, duration_range=config.clip_s)
        video = _probe(write_video(spec, workdir / f"world_{i:04d}.mp4"))
        clips.append(Clip.of(video, 0, 0.0, spec.duration_s))
    return _decode(config, clips)


def heldout_world(config: VAETrainConfig, workdir: Path) -> np.ndarray:
    """The held-out world clips: the same for every ``config.seed``."""
    rng = np.random.default_rng((HELDOUT_SEED, _WORLD))
    return world_clips(config, rng, config.heldout_world_clips, workdir)


def world_seeds(config: VAETrainConfig, heldout: bool) -> list[int]:
    """``VideoSpec.seed`` of every training (or held-out) world clip, without rendering them."""
    rng = np.random.default_rng((HELDOUT_SEED if heldout else config.seed, _WORLD))
    n = config.heldout_world_clips if heldout else config.world_clips
    return [random_spec(rng, max_shots=1, duration_range=config.clip_s).seed for _ in range(n)]


def footage_clips(config: VAETrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) random spans of the footage; held-out ones lie in the end of the first file."""
    fc = config.footage
    if fc.train_clips == 0 and fc.heldout_clips == 0:
        empty = np.zeros((0, config.frames, config.height, config.width, 3), np.uint8)
        return empty, empty
    videos = [_probe(p) for p in sample_footage(Path(fc.cache_dir or cache_root() / "footage"))]
    ends = [v.probe.duration_s - 0.1 for v in videos]  # clear of a short last frame
    split = ends[0] - fc.heldout_s
    ranges = [(0.0, split), *((0.0, end) for end in ends[1:])]
    rng, heldout_rng = (np.random.default_rng((s, _FOOTAGE)) for s in (config.seed, HELDOUT_SEED))
    train = [_span(rng, config.clip_s, videos, ranges, i) for i in range(fc.train_clips)]
    held = [
        _span(heldout_rng, config.clip_s, videos[:1], [(split, ends[0])], i) for i in range(fc.heldout_clips)
    ]
    return _decode(config, train), _decode(config, held)


def _span(
    rng: np.random.Generator,
    clip_s: tuple[float, float],
    videos: list[Video],
    ranges: list[tuple[float, float]],
    index: int,
) -> Clip:
    k = int(rng.integers(len(videos)))
    lo, hi = ranges[k]
    length = float(rng.uniform(clip_s[0], min(clip_s[1], hi - lo)))
    start = round(float(rng.uniform(lo, hi - length)), 3)
    return Clip.of(videos[k], index, start, round(start + length, 3))


def _probe(path: Path) -> Video:
    video = ProbeStage().probe(Source.from_uri(path))
    if isinstance(video, Failure):
        raise RuntimeError(f"probe failed on {path}: {video.reason}")
    return video


def _decode(config: VAETrainConfig, clips: list[Clip]) -> np.ndarray:
    out = np.empty((len(clips), config.frames, config.height, config.width, 3), np.uint8)
    stage = DecodeStage(DecodeConfig(views={_VIEW: config.view}))
    for i, decoded in enumerate(stage.process_batch(clips)):
        if isinstance(decoded, Failure):
            raise RuntimeError(f"decode failed on {decoded.uri} at {decoded.start_s} s: {decoded.reason}")
        frames_THWC = decoded.views[_VIEW].frames_THWC
        if frames_THWC.shape != out.shape[1:]:
            raise RuntimeError(f"{decoded.clip.uri}: decoded {frames_THWC.shape}, not {out.shape[1:]}")
        out[i] = frames_THWC
    return out


def _crops(rng: np.random.Generator, frames_NTHWC: np.ndarray, batch_size: int, crop: int) -> np.ndarray:
    """``frames_BTHWC``: random clips, each cropped at a random place and flipped left-right half the time."""
    _, _, h, w, _ = frames_NTHWC.shape
    out = []
    for i in rng.integers(len(frames_NTHWC), size=batch_size):
        y, x = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        clip_THWC = frames_NTHWC[i, :, y : y + crop, x : x + crop]
        out.append(clip_THWC[:, :, ::-1] if rng.random() < 0.5 else clip_THWC)
    return np.stack(out)


def batches(config: VAETrainConfig, frames_NTHWC: np.ndarray) -> Iterator[np.ndarray]:
    """Endless training batches ``frames_BTHWC``: ``batch_size`` random ``crop`` x ``crop`` crops of random
    clips, each flipped left-right half the time, in an order fixed by ``seed``."""
    rng = np.random.default_rng((config.seed, _ORDER))
    while True:
        yield _crops(rng, frames_NTHWC, config.batch_size, config.crop)
