"""``dataengine eval-captions``: how reconstruction-grade a recipe's captioner is, on the synthetic world.

Held-out world clips (single shots, seeds no training set uses) are written as videos, probed, decoded
through the recipe's caption view and captioned by the recipe's caption stage, exactly as ``dataengine
run`` would. Each caption is then read back (``world.read_caption``, text only) and scored against the
clip's ground truth (``world.fidelity``): fact recall and precision per attribute, and the clip re-rendered
from the caption alone (PSNR, per-object mask IoU). ``OUT/report.html`` shows every clip's frames beside
their blind reconstruction with its caption; ``OUT/scores.json`` holds the numbers.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dataengine.caption.schema import StructuredCaption
from dataengine.records import CaptionedClip, Clip, DecodedClip, Failure, Source
from dataengine.stages import DecodeStage, ProbeStage
from dataengine.stages.caption import CaptionStage
from dataengine.world.fidelity import ATTRIBUTES, Fidelity, ShotScore, rebuild, score_shot
from dataengine.world.generate import random_spec, write_video
from dataengine.world.language import ReadShot, read_caption
from dataengine.world.render import render_shot
from dataengine.world.spec import ShotSpec, VideoSpec
from pipelines.local import batched
from pipelines.recipes import RecipeConfig

EVAL_SEED = (
    20_261_124  # held-out world clips: distillation draws from other seeds (distill.WORLD_SEED_OFFSET)
)
REPORT, SCORES = "report.html", "scores.json"


def world_eval_specs(n: int, seed: int = EVAL_SEED) -> list[VideoSpec]:
    """``n`` single-shot world clips of 2-4 s at 320 x 240, 24 fps: the held-out set."""
    rng = np.random.default_rng(seed)
    return [random_spec(rng, max_shots=1, duration_range=(2.0, 4.0)) for _ in range(n)]


@dataclass
class ClipResult:
    video: str
    caption: str | None  # prose, or None when the caption stage failed
    failure: str | None
    score: ShotScore
    sheet: str  # side-by-side PNG, relative to the report


@dataclass
class EvalResult:
    fidelity: Fidelity
    clips: list[ClipResult]
    engine: str
    model: str
    report: Path
    seconds: float

    def as_json(self) -> dict[str, Any]:
        f = self.fidelity
        return {
            "fact_recall": round(f.fact_recall, 4),
            "fact_precision": round(f.fact_precision, 4),
            "recon_psnr": round(f.recon_psnr, 2),
            "recon_iou": round(f.recon_iou, 4),
            "per_attribute": {k: round(v, 4) for k, v in f.per_attribute.items()},
            "position_axes": {k: round(v, 4) for k, v in f.position_axes.items()},
            "clips": f.shots,
            "captioned": sum(c.failure is None for c in self.clips),
            "engine": self.engine,
            "model": self.model,
            "report": str(self.report),
            "seconds": round(self.seconds, 1),
        }


def eval_captions(
    recipe: RecipeConfig, out: Path, n: int = 16, seed: int = EVAL_SEED, stage: CaptionStage | None = None
) -> EvalResult:
    """Caption ``n`` held-out world clips with ``recipe`` and score the captions.

    Args:
        recipe: its decode caption view and caption stage are used as a run would use them.
        out: folder for the clips (``world/``), ``report.html``, ``scores.json`` and the frame sheets.
        n: how many clips.
        seed: which held-out clips.
        stage: a set-up caption stage to reuse (its engine stays up); default: built, set up and torn down.
    """
    started = time.perf_counter()
    specs = world_eval_specs(n, seed)
    (out / "world").mkdir(parents=True, exist_ok=True)
    paths = [write_video(spec, out / "world" / f"clip_{i:03d}.mp4") for i, spec in enumerate(specs)]
    decoded = decode_whole(paths, recipe)
    results = caption_all(recipe, decoded, stage)
    clips = [
        _score(spec, path, result, out) for spec, path, result in zip(specs, paths, results, strict=True)
    ]
    engine = recipe.caption.engine
    result = EvalResult(
        fidelity=Fidelity.of([c.score for c in clips]),
        clips=clips,
        engine=engine.kind,
        model=engine.model,
        report=out / REPORT,
        seconds=time.perf_counter() - started,
    )
    _write_report(result, out)
    return result


def decode_whole(
    paths: Sequence[Path], recipe: RecipeConfig, view: str | None = None
) -> list[DecodedClip | Failure]:
    """Each video as one clip, decoded through one of the recipe's views only (default: the caption view)."""
    view = view or recipe.caption.view
    stage = DecodeStage(recipe.decode.model_copy(update={"views": {view: recipe.decode.views[view]}}))
    prober = ProbeStage(recipe.probe)
    decoded: list[DecodedClip | Failure] = []
    for path in paths:
        video = prober.probe(Source.from_uri(str(path)))
        if isinstance(video, Failure):
            decoded.append(video)
            continue
        clip = Clip.of(video, index=0, start_s=0.0, end_s=round(video.probe.duration_s, 3))
        decoded.append(stage.decode(clip))
    return decoded


def caption_all(
    recipe: RecipeConfig, decoded: Sequence[DecodedClip | Failure], stage: CaptionStage | None = None
) -> list[CaptionedClip | Failure]:
    """Caption every decoded clip in batches of the recipe's caption pool; failures pass through."""
    own = stage is None
    stage = stage or CaptionStage(recipe.caption)
    if own:
        stage.setup()
    try:
        todo = [d for d in decoded if not isinstance(d, Failure)]
        done: dict[str, CaptionedClip | Failure] = {}
        for batch in batched(todo, recipe.pools.caption.batch_size):
            for clip, result in zip(batch, stage.process_batch(batch), strict=True):
                done[clip.clip_id] = result
    finally:
        if own:
            stage.teardown()
    return [d if isinstance(d, Failure) else done[d.clip_id] for d in decoded]


def _score(spec: VideoSpec, path: Path, result: CaptionedClip | Failure, out: Path) -> ClipResult:
    shot = spec.shots[0]
    if isinstance(result, Failure):
        score = score_shot(shot, None, spec.width, spec.height, spec.fps)
        caption, failure = None, f"{result.stage}: {result.reason}"
        read = None
    else:
        structured = StructuredCaption.model_validate(result.caption.structured)
        (read,) = read_caption(structured)
        score = score_shot(shot, read, spec.width, spec.height, spec.fps)
        caption, failure = result.caption.caption, None
    sheet = Path("frames") / f"{path.stem}.png"
    rebuilt = rebuild(read, shot.duration_s, spec.width, spec.height) if read is not None else None
    _side_by_side(spec, rebuilt, out / sheet)
    return ClipResult(path.name, caption, failure, score, str(sheet))


def _side_by_side(spec: VideoSpec, rebuilt: Any, path: Path) -> None:
    """Three moments of the clip (start, middle, end): original on top, rebuilt from the caption below."""
    shot = spec.shots[0]
    times = [0.0, shot.duration_s / 2, shot.duration_s - 1 / spec.fps]
    top = np.concatenate([render_shot(shot, t, spec.width, spec.height) for t in times], axis=1)
    if rebuilt is not None:
        bottom = np.concatenate([render_shot(rebuilt, t, spec.width, spec.height) for t in times], axis=1)
    else:
        bottom = np.full_like(top, 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.concatenate([top, bottom], axis=0))
    image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR).save(path)


def _write_report(result: EvalResult, out: Path) -> None:
    (out / SCORES).write_text(
        json.dumps({**result.as_json(), "per_clip": [_clip_json(c) for c in result.clips]}, indent=1) + "\n"
    )
    summary = result.as_json()
    rows = "".join(f"<tr><td>{a}</td><td>{summary['per_attribute'][a]:.3f}</td></tr>" for a in ATTRIBUTES)
    rows += "".join(
        f"<tr><td>position: {axis}</td><td>{right:.3f}</td></tr>"
        for axis, right in summary["position_axes"].items()
    )
    cards = []
    for clip in result.clips:
        s = clip.score
        text = (
            html.escape(clip.caption)
            if clip.caption
            else f"<b>no caption</b>: {html.escape(clip.failure or '')}"
        )
        cards.append(
            f"<div class=card><img src='{clip.sheet}'><p class=meta>{html.escape(clip.video)} · recall "
            f"{s.recall:.2f} · precision {s.precision:.2f} · PSNR {s.psnr:.1f} dB · IoU {s.iou:.2f}</p>"
            f"<p>{text}</p></div>"
        )
    page = _PAGE.format(
        title=f"caption fidelity: {html.escape(result.model)} ({result.engine})",
        headline=(
            f"fact recall {summary['fact_recall']:.3f} · precision {summary['fact_precision']:.3f} · "
            f"blind reconstruction PSNR {summary['recon_psnr']:.1f} dB, IoU {summary['recon_iou']:.3f} · "
            f"{summary['captioned']}/{summary['clips']} clips captioned"
        ),
        rows=rows,
        cards="\n".join(cards),
    )
    (out / REPORT).write_text(page)


def _clip_json(clip: ClipResult) -> dict[str, Any]:
    s = clip.score
    return {
        "video": clip.video, "recall": round(s.recall, 4), "precision": round(s.precision, 4),
        "psnr": round(s.psnr, 2), "iou": round(s.iou, 4), "caption": clip.caption, "failure": clip.failure,
        "facts": asdict(s) | {"object_iou": [round(v, 4) for v in s.object_iou]},
    }  # fmt: skip


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:sans-serif;margin:1.5em}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(500px,1fr));gap:1em}}
.card{{border:1px solid #ddd;padding:.5em}} .card img{{width:100%}} .meta{{color:#666;font-size:.85em}}
table{{border-collapse:collapse}} td{{border:1px solid #ddd;padding:2px 8px}}</style></head><body>
<h1>{title}</h1><p><b>{headline}</b></p><p>Each picture: the clip at its start, middle and end (top) and the
same moments redrawn from the caption alone (bottom).</p>
<table><tr><td>attribute</td><td>recall</td></tr>{rows}
</table><div class="grid">{cards}</div></body></html>
"""


# ----------------------------------------------------------------------------------------------------------
# Closed loop: does a generated clip show what its prompt said?


@dataclass
class Adherence:
    """Fact recall of generated clips' captions against the scenes their prompts described, and the same
    captions against the next clip's prompt (``other_prompts``: what the captioner's priors and a generator
    that ignores its prompt score; None for a single clip)."""

    fact_recall: float
    per_attribute: dict[str, float]
    captions: list[str | None]
    other_prompts: float | None = None
    other_per_attribute: dict[str, float] | None = None


def prompt_adherence(
    recipe: RecipeConfig,
    prompts: Sequence[VideoSpec],
    videos: Sequence[Path],
    stage: CaptionStage | None = None,
) -> Adherence:
    """Caption each generated video with ``recipe`` and score the caption against the scene its prompt
    described, seen through the recipe's latents view (a generated clip has the latents' geometry, a
    centre crop of the source scaled to the view's size): the facts a generator got right."""
    view = recipe.decode.views["latents"]
    decoded = decode_whole(videos, recipe)
    results = caption_all(recipe, decoded, stage)
    truths, reads, captions = [], [], []
    for spec, result in zip(prompts, results, strict=True):
        width, height = view.width or spec.width, view.height or spec.height
        shot = cropped_shot(spec.shots[0], spec.width, spec.height, width, height)
        truths.append((shot, width, height, spec.fps))
        read = None
        if not isinstance(result, Failure):
            (read,) = read_caption(StructuredCaption.model_validate(result.caption.structured))
        reads.append(read)
        captions.append(None if isinstance(result, Failure) else result.caption.caption)

    def recall(pairs: Iterable[tuple[tuple[ShotSpec, int, int, int], ReadShot | None]]) -> Fidelity:
        return Fidelity.of([score_shot(shot, read, w, h, fps) for (shot, w, h, fps), read in pairs])

    fidelity = recall(zip(truths, reads, strict=True))
    if len(prompts) == 1:
        return Adherence(fidelity.fact_recall, fidelity.per_attribute, captions)
    other = recall(zip(truths[1:] + truths[:1], reads, strict=True))  # each caption vs the next prompt
    return Adherence(
        fidelity.fact_recall, fidelity.per_attribute, captions, other.fact_recall, other.per_attribute
    )


def through_the_vae(recipe: RecipeConfig, prompts: Sequence[VideoSpec], out_dir: Path) -> list[Path]:
    """Each prompt's own world clip as the DiT learns from it (the recipe's latents view) and as a perfect
    DiT would give it back (through the recipe's VAE and out again), written as a sample is: the ceiling of
    ``prompt_adherence`` for this VAE and captioner."""
    from dataengine.encode.vae import load_vae
    from dataengine.media import write_mp4

    name = recipe.encode.view
    vae = load_vae(recipe.encode.vae)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = [write_video(spec, out_dir / f"{i:02d}_source.mp4") for i, spec in enumerate(prompts)]
    paths = []
    for i, (source, decoded) in enumerate(zip(sources, decode_whole(sources, recipe, name), strict=True)):
        if isinstance(decoded, Failure):  # our own file: a bug or a broken ffmpeg
            raise RuntimeError(f"{source}: {decoded.stage} failed: {decoded.reason}")
        frames = decoded.views[name]
        rebuilt_THWC = vae.decode(vae.encode(vae.fit(frames.frames_THWC)[None]))[0]
        paths.append(write_mp4(rebuilt_THWC, out_dir / f"{i:02d}.mp4", frames.fps))
    return paths


def cropped_shot(shot: ShotSpec, width: int, height: int, out_w: int, out_h: int) -> ShotSpec:
    """``shot`` as it appears after a centre crop to ``out_w:out_h`` and a scale to ``out_w`` x ``out_h``."""
    scale = min(width / out_w, height / out_h)  # source pixels per output pixel
    x0, y0 = (width - out_w * scale) / 2, (height - out_h * scale) / 2
    objects = [
        obj.model_copy(
            update={
                "size_px": max(2, round(obj.size_px / scale)),
                "start_xy": ((obj.start_xy[0] - x0) / scale, (obj.start_xy[1] - y0) / scale),
                "velocity_xy": (obj.velocity_xy[0] / scale, obj.velocity_xy[1] / scale),
            }
        )
        for obj in shot.objects
    ]
    pan = (shot.pan_xy[0] / scale, shot.pan_xy[1] / scale)
    return shot.model_copy(update={"objects": objects, "pan_xy": pan})
