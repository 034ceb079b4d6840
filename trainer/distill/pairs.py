"""(clip, teacher caption) pairs: the synthetic world's, or those a run's captioner wrote."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataengine.caption.schema import StructuredCaption
from dataengine.config import ConfigError
from dataengine.records import Clip, Failure, Frames, Source
from dataengine.stages import DecodeConfig, DecodeStage, ProbeStage, ViewConfig
from dataengine.world.language import shot_caption
from dataengine.world.spec import ShotSpec, VideoSpec
from trainer.distill.config import WORLD_SEED_OFFSET
from trainer.distill.targets import WorldClasses, world_classes


@dataclass
class Pair:
    frames: Frames
    caption: str  # the teacher's structured caption as compact JSON
    # world pairs: each subject's on-screen bounding box (x0, y0, x1, y1, fractions of the frame) at each
    # frame, (subjects, frames, 4) in caption order; None where the teacher does not say where things are
    boxes: np.ndarray | None = None
    classes: WorldClasses | None = None  # world pairs: what each subject and the scene are


def world_pairs(n: int, seed: int, view: ViewConfig, work_dir: Path, workers: int = 1) -> list[Pair]:
    """``n`` single-shot world clips, decoded through the caption view, each with the ground-truth caption
    of its shot, made by ``workers`` processes.

    The shots are written back to back into videos of ``_SHOTS_PER_VIDEO`` shots (hard cuts between them)
    and each shot is decoded as one clip, all clips of a video in one decode pass: four processes per
    fifty clips instead of four per clip. Videos are written at 8 fps: the caption view samples 2 fps, so
    it sees the same frames as at 24 fps, for a third of the encoding work.
    """
    from dataengine.world.generate import random_spec

    rng = np.random.default_rng(seed + WORLD_SEED_OFFSET)
    shots = [random_spec(rng, fps=8, max_shots=1, duration_range=(2.0, 4.0)) for _ in range(n)]
    jobs = [
        (shots[i : i + _SHOTS_PER_VIDEO], view, work_dir / f"world_{i:05d}.mp4")
        for i in range(0, n, _SHOTS_PER_VIDEO)
    ]
    if workers <= 1:
        chunks = [_world_chunk(*job) for job in jobs]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            chunks = list(pool.map(_world_chunk, *zip(*jobs, strict=True)))
    return [pair for chunk in chunks for pair in chunk]


_SHOTS_PER_VIDEO = 50


def _world_chunk(specs: Sequence[VideoSpec], view: ViewConfig, path: Path) -> list[Pair]:
    from dataengine.world.generate import write_video

    first = specs[0]
    joined = first.model_copy(update={"shots": [spec.shots[0] for spec in specs]})
    write_video(joined, path)
    try:
        video = ProbeStage().probe(Source.from_uri(str(path)))
        if isinstance(video, Failure):
            raise RuntimeError(f"probing {path}: {video.reason}")
        clips = [
            Clip.of(video, index=i, start_s=start, end_s=end, shot=i)
            for i, (start, end) in enumerate(joined.shot_times)
        ]
        decoded = DecodeStage(DecodeConfig(views={"caption": view})).process_batch(clips)
    finally:
        path.unlink()
        path.with_suffix(".json").unlink()
    pairs = []
    for shot, (start_s, _), result in zip(joined.shots, joined.shot_times, decoded, strict=True):
        if isinstance(result, Failure):
            raise RuntimeError(f"decoding {path}: {result.reason}")
        frames = result.views["caption"]
        caption = shot_caption(shot, joined.width, joined.height)
        boxes = object_boxes(shot, frames.timestamps_s - start_s, joined.width, joined.height)
        classes = world_classes(shot, joined.width, joined.height)
        pairs.append(Pair(frames, _fit_events(caption, frames).model_dump_json(), boxes, classes))
    return pairs


def object_boxes(shot: ShotSpec, taus: np.ndarray, width: int, height: int) -> np.ndarray:
    """(objects, frames, 4): each object's on-screen bounding box (x0, y0, x1, y1) as fractions of the frame,
    clipped to it, ``taus`` seconds after the shot starts; objects in ``shot`` (and caption) order."""
    boxes = np.empty((len(shot.objects), len(taus), 4))
    for i, obj in enumerate(shot.objects):
        x = obj.start_xy[0] + (obj.velocity_xy[0] - shot.pan_xy[0]) * taus
        y = obj.start_xy[1] + (obj.velocity_xy[1] - shot.pan_xy[1]) * taus
        half = obj.size_px / 2
        boxes[i] = np.stack([x - half, y - half, x + half, y + half], 1) / [width, height, width, height]
    return boxes.clip(0.0, 1.0)


def run_pairs(run_dir: Path, view: ViewConfig | None = None) -> list[Pair]:
    """The clips a run wrote to its shards with the structured captions its captioner made, decoded again
    from their sources through the run's caption view (or ``view``)."""
    import webdataset as wds

    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise ConfigError(
            f"{run_dir} is not a run folder (no run.json); pass a `dataengine run --out` folder"
        )
    recipe = json.loads(run_json.read_text())["config"]
    if view is None:
        view = ViewConfig.model_validate(recipe["decode"]["views"][recipe["caption"]["view"]])
    stage = DecodeStage(DecodeConfig(views={"caption": view}))
    shards = sorted(str(p) for p in (run_dir / "shards").glob("*.tar"))
    prober, pairs = ProbeStage(), []
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode():
        meta = sample["json"]
        if not meta.get("structured"):
            continue
        video = prober.probe(Source.from_uri(meta["source"]))
        if isinstance(video, Failure):
            continue
        clip = Clip.of(video, index=0, start_s=meta["start_s"], end_s=meta["end_s"])
        decoded = stage.decode(clip)
        if isinstance(decoded, Failure):
            continue
        frames = decoded.views["caption"]
        caption = StructuredCaption.model_validate(meta["structured"])
        pairs.append(Pair(frames, _fit_events(caption, frames).model_dump_json()))
    if not pairs:
        raise ConfigError(f"{run_dir} has no captioned clips to learn from")
    return pairs


def _fit_events(caption: StructuredCaption, frames: Frames) -> StructuredCaption:
    """Event times clipped to the span the prompt announces (frames / fps), as guided decoding bounds them."""
    limit = math.ceil(len(frames.frames_THWC) / frames.fps * 10) / 10
    events = [
        e.model_copy(update={"start_s": min(e.start_s, limit), "end_s": min(e.end_s, limit)})
        for e in caption.events
    ]
    return caption.model_copy(update={"events": events})
