"""The loss curve a student folder keeps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def loss_curve(losses: Sequence[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        steps, values = zip(*losses, strict=True)
        ax.plot(steps, values)
    ax.set_xlabel("step")
    ax.set_ylabel("caption token loss")
    ax.set_yscale("log")
    ax.set_title("student distillation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
