"""What the training loops share: the learning-rate schedule's two pieces, the budget a run trains within,
writing a file atomically, and the loss-curve plot.

Each loop keeps its own convention on top of the schedule's pieces (whether steps count from 0 or 1, whether
the cosine starts after the warm-up or runs under it): ``trainer.dit.train.lr_factor``,
``trainer.distill.loop.lr_factor`` and ``trainer.vae.train.lr_factor``. Whole output folders (a student, a
VAE) are written in a temporary sibling and renamed by ``dataengine.model_cache.build_folder``; single files
that are replaced while a run goes on (DiT checkpoints, the metrics log) by ``write_atomically``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# --------------------------------------------------------------------------------------- learning rate


def warmup(step: int, warmup_steps: int) -> float:
    """Linear warm-up: ``(step + 1) / warmup_steps`` over the first ``warmup_steps`` steps (``step`` counts
    from 0), then 1; always 1 when ``warmup_steps`` is 0."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def cosine(progress: float, floor: float) -> float:
    """Half a cosine from 1 at ``progress`` 0 down to ``floor`` at ``progress`` 1, and ``floor`` after."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# ---------------------------------------------------------------------------------------------- budget


class Budget:
    """Train until ``max_steps`` steps have run or ``minutes`` have passed, whichever comes first (None: no
    limit of that kind). The clock starts when the budget is made."""

    def __init__(self, max_steps: int | None, minutes: float | None) -> None:
        self.max_steps: float = max_steps or math.inf
        self.seconds = minutes * 60 if minutes else math.inf
        self.started = time.perf_counter()

    @property
    def timed(self) -> bool:
        """Whether the run has a time limit."""
        return math.isfinite(self.seconds)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def steps(self, first: int = 0) -> Iterator[tuple[int, float]]:
        """``(step, seconds elapsed before it)``, steps numbered from ``first``, while the budget lasts."""
        step = first
        while step - first < self.max_steps and (elapsed := self.elapsed()) < self.seconds:
            yield step, elapsed
            step += 1

    def progress(self, steps_done: int, elapsed: float) -> float:
        """How far through the budget a run is: the larger of its shares of the steps and of the time."""
        return max(steps_done / self.max_steps, elapsed / self.seconds)

    def expected_steps(self, step: int, elapsed: float) -> float:
        """How many steps the run will take, for a schedule laid out over them: ``max_steps`` without a time
        limit; with one, from step 11 on (``step`` counting from 1), the pace so far over the whole budget,
        and before that ``max_steps`` or 10**6, whichever is fewer."""
        if not self.timed:
            return self.max_steps
        if step > 10:
            return min(self.max_steps, step * self.seconds / elapsed)
        return min(self.max_steps, 10**6)


# ---------------------------------------------------------------------------------------------- output


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(partial)`` into the hidden sibling ``.NAME.partial``, then rename it to ``path``, replacing
    what is there: a reader (or a resume after a crash) sees the old file or the whole new one."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def plot_losses(
    path: Path,
    losses: Sequence[tuple[int, float]],
    *,
    ylabel: str,
    title: str,
    log_scale: bool = False,
    lr: Sequence[tuple[int, float]] = (),
) -> Path:
    """A PNG of ``(step, loss)`` points, on a log axis with ``log_scale``, and with ``lr``'s ``(step, learning
    rate)`` points on a second axis when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        ax.plot(*zip(*losses, strict=True), label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_scale:
        ax.set_yscale("log")
    if lr:
        lr_ax = ax.twinx()
        lr_ax.plot(*zip(*lr, strict=True), color="tab:orange", alpha=0.5, label="lr")
        lr_ax.set_ylabel("learning rate")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
