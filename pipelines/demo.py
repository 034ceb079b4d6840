"""``dataengine demo``: the whole loop on the embedded default, one step after the other, timed.

synthesise videos (+ real footage from a PyPI wheel) -> ``run --recipe demo`` -> ``train --recipe demo`` ->
``sample`` from a caption the run wrote -> ``inspect``; then where everything is and how long each step took.
Every step resumes or reuses what an earlier demo in the same folder made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dataengine import synth
from dataengine.footage import sample_footage
from dataengine.shards import read_manifest
from pipelines.inspect_run import Inspection, inspect_run
from pipelines.launch import launch_run
from pipelines.recipes import get_recipe
from pipelines.runner import RunError
from trainer.recipes import get_train_recipe
from trainer.sample import loss_curve, sample_video
from trainer.train import METRICS, Trainer


class Demo:
    def __init__(self, out: Path, videos: int, steps: int, console: Console) -> None:
        self.out, self.n, self.steps, self.console = out, videos, steps, console
        self.timings: dict[str, float] = {}
        self.paths: dict[str, Path] = {}

    @contextmanager
    def _step(self, index: int, title: str) -> Iterator[None]:
        self.console.rule(f"[bold]{index}/5 {title}")
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
        with self._step(3, f"train: the tiny DiT, {self.steps} steps on the run's shards (recipe demo)"):
            self._train(run_dir, ckpt)
        with self._step(4, "sample: a clip from one of the run's captions"):
            prompt = self._prompt(run_dir)
            self.console.print(f"prompt: {prompt[:200]}")
            result = sample_video(ckpt, prompt, self.out / "sample", steps=20)
            self.paths.update({"sampled video": result.video, "sampled frames": result.sheet})
        with self._step(5, "inspect"):
            found = inspect_run(run_dir)
            show(found)
        self.paths.update({"shards": run_dir / "shards", "manifest": run_dir / "manifest"})
        if found.sheet is not None:
            self.paths["contact sheet"] = found.sheet
        self._summary()

    def _inputs(self, videos: Path) -> list[str]:
        synth.synthesize(videos, self.n, seed=0, max_shots=3)
        inputs = [str(videos)]
        try:
            footage = sample_footage(self.out / "footage")
            inputs += [str(p) for p in footage]
            self.console.print(
                f"{self.n} synthetic videos in {videos}; real footage: {', '.join(p.name for p in footage)}"
            )
        except OSError as exc:
            self.console.print(f"{self.n} synthetic videos in {videos}; no real footage ({exc})")
        return inputs

    def _train(self, run_dir: Path, ckpt: Path) -> None:
        config = get_train_recipe("demo")
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

    def _prompt(self, run_dir: Path) -> str:
        rows = read_manifest(run_dir).to_pylist()
        return next(r["caption"] for r in rows if r["status"] == "ok" and r["caption"])

    def _summary(self) -> None:
        table = Table("what", "where", title="demo: where everything is")
        for name, path in self.paths.items():
            table.add_row(name, str(path))
        self.console.print(table)
        total = sum(self.timings.values())
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        self.console.print(f"time per step: {steps}; total {total:.1f} s")
