"""How well the caption quality gate separates captions to keep from captions to refuse, measured.

Three sets, each captioned once by a recipe's caption stage with the gate switched to *score only*
(``SCORE_ONLY``: parse, schema and event-time checks stay, every text and confidence check is off, one
attempt), so that every output that parses can be judged afterwards by the gate under test, offline, with
any thresholds (``quality.judge_caption`` on the structure and the recorded confidence):

* ``reference``: ground-truth world captions (``world.shot_caption``), no model: good captions by
  construction, so every rejection is a false reject.
* ``world``: held-out world clips captioned by the recipe's model; each caption is graded by the fidelity
  scorer (``score_shot``), and a caption graded correct that the gate rejects is a false reject.
* ``ood``: footage the world captioner has never seen (``footage.out_of_domain_set`` + ``sample_footage``);
  what the gate still accepts is checked for loops by ``degenerate``, a check built differently from the
  gate's own (word-level regexes and n-gram counts instead of character periodicity).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataengine.caption.quality import QualityConfig, caption_fields, judge_caption
from dataengine.caption.schema import StructuredCaption, render_caption
from dataengine.caption.signals import Confidence, compression_ratio
from dataengine.records import CaptionedClip, DecodedClip, Failure, Source
from dataengine.stages import DecodeStage, ProbeStage, SplitStage
from dataengine.stages.base import Stage
from dataengine.stages.caption import CaptionStage
from dataengine.world.fidelity import score_shot
from dataengine.world.generate import random_spec, write_video
from dataengine.world.language import read_caption, shot_caption
from dataengine.world.verify import WorldRedrawConfig, redraw_problem
from pipelines.eval_captions import EVAL_SEED, caption_all, decode_whole, world_eval_specs
from pipelines.local import run_chain
from pipelines.recipes import RecipeConfig
from pipelines.regate import check_of

SCORE_ONLY = QualityConfig(
    max_repeated_ngrams=1.0,
    max_same_word_run=1_000_000,
    max_char_run=1_000_000,
    min_words=1,
    loop_min_repeats=None,
    max_compression_ratio=None,
    max_field_compression_ratio=None,
    max_symbol_share=None,
    max_symbol_run=None,
    max_number_digits=None,
    balanced_brackets=False,
    min_mean_logprob=None,
    min_window_logprob=None,
)
CORRECT_RECALL = 0.8  # a world caption whose fact recall reaches this is graded correct
_WORD_LOOP = re.compile(r"(\w{2,}?)\1{2,}")  # a piece of a word three times over: motionmotionmotion
_PHRASE_LOOP = re.compile(r"\b(\w+(?:\W+\w+){0,3})(?:\W+\1\b){2,}", re.IGNORECASE)  # left, left, left


def degenerate(caption: StructuredCaption) -> str | None:
    """Why a caption reads as a loop to a check independent of the gate's implementation, or None: a piece
    of a word three times over inside one word, a phrase of 1-4 words three times in a row, a word 3-gram
    repeated three times in one field, or a dense caption that zlib compresses over 2.5 times."""
    fields = [s for _, s in caption_fields(caption.model_dump()) if s.strip()]
    for text in fields:
        for word in text.split():
            if match := _WORD_LOOP.search(word):
                return f"word loop {match.group(0)[:30]!r}"
        if match := _PHRASE_LOOP.search(text):
            return f"phrase loop {match.group(0)[:30]!r}"
        words = re.findall(r"\w+", text.lower())
        grams = Counter(zip(words, words[1:], words[2:], strict=False))
        if grams and max(grams.values()) >= 3:
            return f"3-gram x{max(grams.values())}"
    ratio = compression_ratio(render_caption(caption))
    return f"zlib ratio {ratio:.2f}" if ratio > 2.5 else None


@dataclass
class Judged:
    """One output and what the gate under test made of it."""

    name: str
    parsed: bool  # False: the output failed the score-only gate (no structure to judge)
    ok: bool
    reason: str | None
    mean_logprob: float | None = None
    min_window_logprob: float | None = None
    compression: float = 0.0
    redraw_psnr: float | None = None
    recall: float | None = None  # world only
    degenerate: str | None = None  # accepted outputs only
    caption: str | None = None


@dataclass
class GateReport:
    reference: dict[str, Any] = field(default_factory=dict)
    world: list[Judged] = field(default_factory=list)
    ood: list[Judged] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        correct = [j for j in self.world if j.recall is not None and j.recall >= CORRECT_RECALL]
        ood_ok = [j for j in self.ood if j.ok]
        return {
            "reference": self.reference,
            "world": {
                "captions": len(self.world),
                "graded_correct": len(correct),
                "false_rejects": sum(not j.ok for j in correct),
                "false_reject_rate": _rate(sum(not j.ok for j in correct), len(correct)),
                "rejected_all": sum(not j.ok for j in self.world),
                "reasons": _reasons(self.world),
            },
            "ood": {
                "outputs": len(self.ood),
                "accepted": len(ood_ok),
                "refused": len(self.ood) - len(ood_ok),
                "accepted_degenerate": sum(j.degenerate is not None for j in ood_ok),
                "accepted_loop_free_share": _rate(sum(j.degenerate is None for j in ood_ok), len(ood_ok)),
                "reasons": _reasons(self.ood),
            },
            "seconds": round(self.seconds, 1),
        }


def reference_false_rejects(config: QualityConfig, n: int = 2000, seed: int = 7) -> dict[str, Any]:
    """The gate on ``n`` ground-truth world captions: how many it rejects (all false) and its cost."""
    rng = np.random.default_rng(seed)
    captions = []
    for _ in range(n):
        spec = random_spec(rng, max_shots=1, duration_range=(2.0, 4.0))
        captions.append(shot_caption(spec.shots[0], spec.width, spec.height))
    started = time.perf_counter()
    verdicts = [judge_caption(c, config) for c in captions]
    seconds = time.perf_counter() - started
    rejected = [v.reason for v in verdicts if not v.ok]
    ratios = [v.scores.compression_ratio for v in verdicts if v.scores]
    return {
        "captions": n,
        "false_rejects": len(rejected),
        "false_reject_rate": _rate(len(rejected), n),
        "reasons": dict(Counter(_kind(r) for r in rejected if r)),
        "compression_ratio_max": round(max(ratios), 3),
        "gate_ms_per_caption": round(1000 * seconds / n, 3),
    }


def evaluate_gate(
    recipe: RecipeConfig,
    config: QualityConfig,
    verify: WorldRedrawConfig | None,
    work: Path,
    n_world: int = 64,
    ood: Sequence[Path] = (),
    seed: int = EVAL_SEED,
    stage: CaptionStage | None = None,
) -> GateReport:
    """Caption ``n_world`` held-out world clips and the ``ood`` inputs with ``recipe`` (score only, one
    attempt) and judge every output with ``config`` and ``verify``. ``stage``: a set-up stage (its engine
    is reused; its quality config is replaced by ``SCORE_ONLY`` here)."""
    started = time.perf_counter()
    recipe = _score_only(recipe)
    own = stage is None
    stage = stage or CaptionStage(recipe.caption)
    stage.config = recipe.caption.model_copy(update={"engine": stage.config.engine})
    if own:
        stage.setup()
    try:
        report = GateReport(reference=reference_false_rejects(config))
        gate = _Gate(config, verify, recipe.caption.view)
        report.world = _world(recipe, gate, work / "world", n_world, seed, stage)
        report.ood = _ood(recipe, gate, ood, stage)
    finally:
        if own:
            stage.teardown()
    report.seconds = time.perf_counter() - started
    return report


def _score_only(recipe: RecipeConfig) -> RecipeConfig:
    caption = recipe.caption.model_copy(update={"quality": SCORE_ONLY, "max_attempts": 1, "verify": None})
    return recipe.model_copy(update={"caption": caption})


@dataclass(frozen=True)
class _Gate:
    quality: QualityConfig
    verify: WorldRedrawConfig | None
    view: str  # the decoded view the recipe captions


def _world(
    recipe: RecipeConfig, gate: _Gate, folder: Path, n: int, seed: int, stage: CaptionStage
) -> list[Judged]:
    specs = world_eval_specs(n, seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_video(spec, folder / f"clip_{i:03d}.mp4") for i, spec in enumerate(specs)]
    decoded = decode_whole(paths, recipe)
    results = caption_all(recipe, decoded, stage)
    judged = []
    for path, spec, clip, result in zip(paths, specs, decoded, results, strict=True):
        one = _judge(path.name, clip, result, gate)
        if isinstance(result, CaptionedClip):
            structured = StructuredCaption.model_validate(result.caption.structured)
            (read,) = read_caption(structured)
            one.recall = score_shot(spec.shots[0], read, spec.width, spec.height, spec.fps).recall
        judged.append(one)
    return judged


def _ood(recipe: RecipeConfig, gate: _Gate, inputs: Sequence[Path], stage: CaptionStage) -> list[Judged]:
    chain: list[Stage[Any, Any]] = [
        ProbeStage(recipe.probe),
        SplitStage(recipe.split),
        DecodeStage(recipe.decode),
    ]
    decoded = [
        r for r in run_chain(chain, [Source.from_uri(p) for p in inputs]) if isinstance(r, DecodedClip)
    ]
    results = caption_all(recipe, decoded, stage)
    return [
        _judge(f"{Path(d.clip.uri).name}@{d.clip.start_s:g}", d, r, gate)
        for d, r in zip(decoded, results, strict=True)
    ]


def _judge(name: str, decoded: DecodedClip | Failure, result: CaptionedClip | Failure, gate: _Gate) -> Judged:
    if isinstance(result, Failure) or isinstance(decoded, Failure):
        failure = result if isinstance(result, Failure) else decoded
        assert isinstance(failure, Failure)
        return Judged(name, parsed=False, ok=False, reason=failure.reason)
    caption = result.caption
    structured = StructuredCaption.model_validate(caption.structured)
    confidence = None
    if caption.mean_logprob is not None and caption.min_window_logprob is not None:
        confidence = Confidence(caption.output_tokens, caption.mean_logprob, caption.min_window_logprob)
    verdict = judge_caption(structured, gate.quality, confidence)
    reason, psnr = verdict.reason, None
    if gate.verify is not None:
        frames, probe = decoded.views[gate.view], decoded.clip.probe
        mismatch, psnr = redraw_problem(
            structured, frames, decoded.clip.start_s, probe.width, probe.height, gate.verify
        )
        reason = reason or mismatch
    return Judged(
        name,
        parsed=True,
        ok=reason is None,
        reason=reason,
        redraw_psnr=psnr,
        mean_logprob=caption.mean_logprob,
        min_window_logprob=caption.min_window_logprob,
        compression=verdict.scores.compression_ratio if verdict.scores else 0.0,
        degenerate=degenerate(structured) if reason is None else None,
        caption=caption.caption,
    )


def _kind(reason: str) -> str:
    """Which check refused, without numbers and fields (a failure's attempts' reasons: the first one's)."""
    return check_of(reason.split(" attempts: ", 1)[-1])


def _reasons(judged: Sequence[Judged]) -> dict[str, int]:
    return dict(Counter(_kind(j.reason or "") for j in judged if not j.ok).most_common())


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
