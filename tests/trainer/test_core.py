"""The shared pieces: each trainer's learning-rate schedule keeps the values its own copy gave (pinned below,
computed with those copies before they were replaced by ``trainer.core``), the budget stops at whichever
limit comes first, files are replaced whole, and the loss curve is drawn."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trainer.core import Budget, cosine, plot_losses, warmup, write_atomically
from trainer.distill import DistillConfig
from trainer.distill.loop import lr_factor as distill_lr_factor
from trainer.dit.train import OptimConfig
from trainer.dit.train import lr_factor as dit_lr_factor
from trainer.vae.train import lr_factor as vae_lr_factor

DIT = [  # OptimConfig's defaults (warm-up 100, floor 0.1) over 1000 steps: (step, factor)
    (0, 0.01), (1, 0.02), (50, 0.51), (99, 1.0), (100, 1.0), (101, 0.9999972584460056), (550, 0.55),
    (999, 0.10000274155399433), (1000, 0.1), (1500, 0.1),
]  # fmt: skip
DIT_NO_WARMUP = [(0, 1.0), (3, 0.7938926261462366), (10, 0.0)]  # warm-up 0, floor 0, over 10 steps
DISTILL = [  # DistillConfig's defaults (lr 2e-3, warm-up 100, floor 0.05): (step from 1, expected steps, lr)
    (1, 1e6, 2e-05), (50, 1e6, 0.001), (100, 1e6, 0.002), (101, 1e6, 0.001999999999995311),
    (101, 3000.0, 0.0019999994425610426), (1550, 3000.0, 0.0010500000000000002), (3000, 3000.0, 0.0001),
    (4000, 3000.0, 0.0001), (200, 10**9, 0.001999999999999953),
]  # fmt: skip
DISTILL_NO_WARMUP = [(1, 8.0, 0.0004809698831278217), (4, 8.0, 0.00025), (8, 8.0, 0.0)]  # lr 5e-4, floor 0
VAE = [  # warm-up 50, under a cosine to 0.1 over the budget: (step, progress, factor)
    (0, 0.0, 0.02), (24, 0.1, 0.48898771616640957), (49, 0.2, 0.9140576474687263),
    (50, 0.2, 0.9140576474687263), (100, 0.5, 0.55), (400, 1.0, 0.1), (400, 1.5, 0.1),
]  # fmt: skip
VAE_NO_WARMUP = [(0, 0.0, 1.0), (5, 0.75, 0.23180194846605365)]


def test_the_dit_schedule_keeps_its_values() -> None:
    for step, factor in DIT:
        assert dit_lr_factor(step, OptimConfig(), 1000) == pytest.approx(factor, rel=1e-12), step
    flat = OptimConfig(warmup_steps=0, min_lr_ratio=0.0)
    for step, factor in DIT_NO_WARMUP:
        assert dit_lr_factor(step, flat, 10) == pytest.approx(factor, rel=1e-12, abs=1e-15), step


def test_the_distill_schedule_keeps_its_values() -> None:
    config = DistillConfig(pairs="world")
    for step, expected, lr in DISTILL:
        assert config.lr * distill_lr_factor(config, step, expected) == pytest.approx(lr, rel=1e-12), step
    flat = DistillConfig(pairs="world", warmup_steps=0, lr=5e-4, min_lr_ratio=0.0)
    for step, expected, lr in DISTILL_NO_WARMUP:
        got = flat.lr * distill_lr_factor(flat, step, expected)
        assert got == pytest.approx(lr, rel=1e-12, abs=1e-18), step


def test_the_vae_schedule_keeps_its_values() -> None:
    for step, progress, factor in VAE:
        assert vae_lr_factor(step, progress, 50) == pytest.approx(factor, rel=1e-12), step
    for step, progress, factor in VAE_NO_WARMUP:
        assert vae_lr_factor(step, progress, 0) == pytest.approx(factor, rel=1e-12), step


def test_the_pieces_meet_at_their_ends() -> None:
    assert warmup(0, 4) == 0.25 and warmup(3, 4) == warmup(9, 4) == warmup(0, 0) == 1.0
    assert cosine(0.0, 0.2) == 1.0 and cosine(1.0, 0.2) == cosine(7.0, 0.2) == pytest.approx(0.2)
    assert cosine(0.5, 0.2) == pytest.approx(0.6)


def test_a_budget_stops_at_whichever_limit_comes_first() -> None:
    assert [step for step, _ in Budget(max_steps=3, minutes=None).steps()] == [0, 1, 2]
    assert [step for step, _ in Budget(max_steps=3, minutes=60).steps(first=1)] == [1, 2, 3]
    spent = Budget(max_steps=None, minutes=1e-9)  # the time is up before the first step
    assert list(spent.steps()) == [] and spent.timed
    untimed = Budget(max_steps=None, minutes=None)
    assert not untimed.timed and untimed.progress(10**6, 1e6) == 0.0
    assert untimed.expected_steps(50, 1.0) == math.inf
    timed = Budget(max_steps=500, minutes=1)  # 60 s
    assert timed.progress(100, 30.0) == 0.5 and timed.progress(400, 30.0) == 0.8
    assert timed.expected_steps(5, 1.0) == 500  # too early to tell: at most max_steps
    assert timed.expected_steps(20, 6.0) == 200  # 20 steps in 6 s: 200 in the minute
    assert timed.expected_steps(20, 1.0) == 500
    assert Budget(max_steps=None, minutes=1).expected_steps(5, 1.0) == 10**6


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    write_atomically(target, lambda partial: partial.write_text("new"))
    assert target.read_text() == "new"

    def fails(partial: Path) -> None:
        partial.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(target, fails)
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_the_loss_curve_is_a_png(tmp_path: Path) -> None:
    losses = [(10, 2.0), (20, 1.0), (30, 0.5)]
    lrs = [(10, 1e-3), (20, 5e-4), (30, 1e-4)]
    for name, kwargs in (("plain", {}), ("log", {"log_scale": True}), ("lr", {"lr": lrs})):
        path = plot_losses(tmp_path / f"{name}.png", losses, ylabel="loss", title=name, **kwargs)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_losses(tmp_path / "empty.png", [], ylabel="loss", title="no steps").stat().st_size > 0
