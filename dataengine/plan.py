"""What ``dataengine plan`` reports per stage, the budget refusals, and the cluster estimate.

A stage plan holds numbers of two kinds, and every number says which: **measured** here (on this CPU, with
the model built at its real architecture and random weights) or **derived** (arithmetic from a named source:
a processor's rules, a published configuration, a FLOPs formula). GPU memory is always an estimate (weights
at the GPU dtype plus activations scaled from the measured peak); cluster throughput is an estimate at a
stated efficiency.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from dataengine.config import ConfigError

GiB = 2**30
T = TypeVar("T")


class BudgetError(ConfigError):
    """A recipe that breaks a budget (a context length, a card's memory, a shape the next stage refuses).

    The message names the budget, the numbers on both sides and the override that fixes it.
    """

    def __init__(self, stage: str, budget: str, message: str, fix: str) -> None:
        super().__init__(f"{stage}: {budget} is broken: {message}. Fix: {fix}")
        self.stage, self.budget, self.fix = stage, budget, fix


@dataclass(frozen=True)
class Fact:
    """One reported number (or shape) and where it came from."""

    name: str
    value: str
    source: str  # "measured here", or the rule/config/formula it was derived from


@dataclass
class StagePlan:
    """One stage of a recipe at its real shapes: what goes in and out, its model, memory and FLOPs."""

    stage: str  # caption, text, encode, train
    model: str  # the architecture, e.g. "Qwen2.5-VL-7B-Instruct (28 layers; built with 2)"
    params: int  # of the full architecture, even when fewer layers were built here
    facts: list[Fact] = field(default_factory=list)
    peak_bytes_here: int | None = None  # measured on this machine (CPU, float32 unless stated)
    gpu_bytes: int | None = None  # estimated at the recipe's GPU dtype
    flops_per_clip: float = 0.0
    bytes_out_per_clip: int | None = None  # what the stage writes per clip (latents, embeddings)
    notes: list[str] = field(default_factory=list)  # cuts, substitutions, what was not measured

    def fact(self, name: str, value: object, source: str) -> None:
        self.facts.append(Fact(name, str(value), source))


GPU = Literal["h100", "h200", "a100"]


@dataclass(frozen=True)
class Card:
    name: str
    bf16_flops: float  # dense tensor-core peak, FLOP/s
    memory_bytes: int
    bandwidth: float  # HBM bytes/s


# Vendor datasheets (dense bf16, no sparsity): H100 SXM 989 TFLOP/s, 80 GB HBM3, 3.35 TB/s; H200 SXM the same
# compute with 141 GB HBM3e at 4.8 TB/s; A100 SXM 80 GB 312 TFLOP/s, 2.04 TB/s.
CARDS: dict[str, Card] = {
    "h100": Card("H100 SXM 80GB", 989e12, 80 * 10**9, 3.35e12),
    "h200": Card("H200 SXM 141GB", 989e12, 141 * 10**9, 4.8e12),
    "a100": Card("A100 SXM 80GB", 312e12, 80 * 10**9, 2.04e12),
}


@dataclass(frozen=True)
class StageRate:
    stage: str
    clips_per_hour: float
    bound: str  # "compute" or "memory bandwidth"
    fits: bool  # the stage's GPU memory estimate fits the card


def cluster_estimate(plans: list[StagePlan], card: Card, gpus: int, efficiency: float) -> list[StageRate]:
    """Clips per hour per stage on ``gpus`` cards, if each stage had them all, at ``efficiency`` of the
    card's peak FLOP/s, or of its bandwidth for a stage that moves more bytes than it computes on (its
    weights once per clip and its output). An estimate: no input pipeline, network or scheduling."""
    rates = []
    for plan in plans:
        weight_bytes = plan.params * 2  # bf16 weights read once per clip
        moved = weight_bytes + (plan.bytes_out_per_clip or 0)
        compute_s = plan.flops_per_clip / (card.bf16_flops * efficiency) if plan.flops_per_clip else 0.0
        memory_s = moved / (card.bandwidth * efficiency)
        seconds = max(compute_s, memory_s, 1e-12)
        fits = plan.gpu_bytes is None or plan.gpu_bytes <= card.memory_bytes
        bound = "compute" if compute_s >= memory_s else "memory bandwidth"
        rates.append(StageRate(plan.stage, gpus * 3600 / seconds, bound, fits))
    return rates


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n: float) -> str:
    if n == 0:
        return "0"
    exponent = min(4, int(math.log10(abs(n)) // 3))
    return f"{n / 10 ** (3 * exponent):.3g}{['', 'K', 'M', 'G', 'T'][exponent]}"


def measure_isolated(fn: Callable[..., T], *args: Any) -> tuple[T, int]:
    """``fn(*args)`` in a fresh process (spawned: imports, no inherited memory), and the peak resident memory
    that call added over what the process held just before it (the interpreter, torch and what ``fn``
    received), measured by ``Meter``. ``fn`` must be importable (module level) and its result picklable;
    what it builds and runs counts. Stages measured one by one this way do not see each other's peaks.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: tuple[T, int] = pool.apply(_measured, (fn, *args))
    return result


def _measured(fn: Callable[..., T], *args: Any) -> tuple[T, int]:
    meter = Meter()
    meter.built()  # nothing built yet: the kernel's peak is reset here, so the imports' peak is left out
    value = fn(*args)
    return value, meter.done()["run"]


def return_freed_memory() -> None:
    """Make glibc map blocks of 64 KiB and more on their own and unmap them when freed, so the RSS peak is
    that of live tensors: with its defaults, freed activations fragment the heap and the peak grows with
    every chunk encoded (by ~16 MB a frame at 120 x 208 through the Wan VAE here)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its own allocator's peak
        return
    libc.mallopt(-3, 64 << 10)  # M_MMAP_THRESHOLD (also stops it adapting upwards)
    libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD: return the heap's free top at once


class Meter:
    """This process's RSS through building a model (``built()``) and running it (``done()``), from the RSS
    after the imports: ``resident``, what the built model holds; ``run``, the most the run added to that
    (activations and inputs; the build's transients are left out: Linux's peak is reset after it); ``peak``,
    the most at any time."""

    def __init__(self) -> None:
        return_freed_memory()
        self.base = rss_now()
        self.build_peak = self.resident = 0

    def built(self) -> None:
        self.build_peak, self.resident = peak_rss() - self.base, rss_now() - self.base
        with contextlib.suppress(OSError):  # not Linux: the run's peak includes the build's
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current one

    def done(self) -> dict[str, int]:
        run = max(0, peak_rss() - self.base - self.resident)
        return {"resident": self.resident, "run": run, "peak": max(self.build_peak, self.resident + run)}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def rss_now() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    except OSError:
        return peak_rss()
