"""The quality gate every engine output passes before it becomes a caption.

Rejects: empty output, output truncated by the token limit, output that does not parse into the schema,
refusals, structures with nothing in them, and text a training set should never hold: loops of any grain
(one character, a few characters inside a word, a phrase across words or fields), text that compresses like a
loop, number and punctuation garbage or unbalanced brackets in prose fields, and output the model itself was
unsure of (token log-probabilities under a floor). A rejection carries a short reason that names the check,
the field and the score; the caption stage retries with changed sampling and records the reasons when it
gives up. The numbers behind the decision (``Scores``) are kept with every caption that passes, so a run can
be filtered again later without captioning again (``judge_caption``).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pydantic import Field, ValidationError

from dataengine.caption.schema import StructuredCaption, render_caption
from dataengine.caption.signals import (
    Confidence,
    compression_ratio,
    longest_loop,
    longest_number,
    longest_symbol_run,
    symbol_share,
    unbalanced_bracket,
)
from dataengine.config import Config

_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i cannot|i can'?t|i am unable|i'?m unable|as an ai|cannot (help|assist)|"
    r"unable to (help|assist|describe|view|see)|no video (was|is) (provided|attached))\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[\w']+")
# JSON escapes let a model emit control characters (unpaired surrogates already fail JSON parsing).
_CHAR_RUN = re.compile(r"(\S)\1+")
_INVALID_CHAR = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_VERBATIM = ("on_screen_text",)  # fields copied from the frame: any characters may be right there


class QualityConfig(Config):
    """Thresholds of the gate. Their false-reject rates on good captions are measured in docs/quality-gate.md;
    a threshold set to None switches its check off (the score is still recorded)."""

    ngram: int = Field(3, ge=1, description="word n-gram size for the repetition test")
    max_repeated_ngrams: float = Field(
        0.3, gt=0, le=1, description="reject when this share of n-grams are repeats of earlier ones"
    )
    max_same_word_run: int = Field(
        8, ge=2, description="reject when one word repeats this many times in a row"
    )
    min_words: int = Field(3, ge=1, description="fewer words in the rendered caption is empty")
    max_char_run: int = Field(12, ge=2, description="reject one non-space character repeated this many times")
    loop_min_repeats: int | None = Field(
        4, ge=2, description="reject a unit of 2..loop_max_unit characters repeated this many times in a row"
    )
    loop_min_chars: int = Field(24, ge=4, description="... when the repetition covers this many characters")
    loop_max_unit: int = Field(40, ge=2, description="the longest unit the loop test looks for")
    max_compression_ratio: float | None = Field(
        3.0, gt=1, description="reject the rendered caption when zlib compresses it more than this"
    )
    max_field_compression_ratio: float | None = Field(
        2.2, gt=1, description="reject a field whose text zlib compresses more than this"
    )
    compression_min_chars: int = Field(
        100, ge=1, description="shorter text is not judged by its compression ratio (zlib's header dominates)"
    )
    max_symbol_share: float | None = Field(
        0.6, gt=0, le=1, description="reject a prose field where this share of tokens has no letter"
    )
    symbol_min_tokens: int = Field(6, ge=1, description="prose fields with fewer tokens skip that test")
    max_symbol_run: int | None = Field(
        5, ge=2, description="reject this many punctuation characters in a row in a prose field"
    )
    max_number_digits: int | None = Field(
        8, ge=2, description="reject a number of this many digits in a prose field"
    )
    balanced_brackets: bool = Field(True, description="reject (), [] or {} left open or closed twice")
    min_mean_logprob: float | None = Field(
        None, le=0, description="reject when the mean token log-prob is under this (engines that report it)"
    )
    min_window_logprob: float | None = Field(
        None, le=0, description="reject when any window of logprob_window tokens averages under this"
    )
    logprob_window: int = Field(16, ge=1, description="tokens per window for min_window_logprob")


@dataclass(frozen=True)
class Scores:
    """The numbers the gate judged by, kept with each caption: rendered caption's zlib ratio and the model's
    confidence (None for engines that report no log-probabilities)."""

    compression_ratio: float
    confidence: Confidence | None = None


@dataclass(frozen=True)
class Verdict:
    """A passed structure (``caption`` set) or a rejection (``reason`` set), with the scores measured."""

    caption: StructuredCaption | None = None
    reason: str | None = None
    scores: Scores | None = None

    @property
    def ok(self) -> bool:
        return self.caption is not None


def judge(
    text: str,
    finish_reason: str | None,
    config: QualityConfig,
    duration_s: float | None = None,
    logprobs: Sequence[float] | None = None,
) -> Verdict:
    """Judge one engine output: its raw text, why generation stopped and, when the engine reports them, the
    sampled tokens' log-probabilities. With ``duration_s``, event times must lie within the clip (with a
    one-second margin)."""
    if not text.strip():
        return Verdict(reason="empty output")
    if finish_reason == "length":
        return Verdict(reason="truncated: generation hit max_tokens")
    if _REFUSAL.search(text):
        return Verdict(reason=f"refusal-like output: {text.strip()[:80]!r}")
    try:
        caption = StructuredCaption.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        return Verdict(reason=f"off-schema output at {where}: {first['msg']}")
    if duration_s is not None:
        late = [
            e for e in caption.events if max(e.start_s, e.end_s) > duration_s + 1.0 or e.end_s < e.start_s
        ]
        if late:
            e = late[0]
            return Verdict(
                reason=f"event at {e.start_s:g}-{e.end_s:g} s lies outside the {duration_s:.1f} s clip"
            )
    confidence = Confidence.of(logprobs or (), config.logprob_window)
    return judge_caption(caption, config, confidence)


def judge_caption(
    caption: StructuredCaption, config: QualityConfig, confidence: Confidence | None = None
) -> Verdict:
    """The text and confidence checks on a caption that already parsed: the gate as it applies to captions
    written earlier (a run's shards), where only the structure and the recorded confidence remain."""
    rendered = render_caption(caption)
    scores = Scores(compression_ratio(rendered), confidence)
    reason = text_problem(caption, rendered, config) or confidence_problem(confidence, config)
    if reason:
        return Verdict(reason=reason, scores=scores)
    return Verdict(caption=caption, scores=scores)


def text_problem(caption: StructuredCaption, rendered: str, config: QualityConfig) -> str | None:
    """Why the caption's text is not something to train on, or None."""
    fields = list(caption_fields(caption.model_dump()))
    for where, text in fields:
        if _INVALID_CHAR.search(text):
            return f"invalid characters (control codes) in {where}: {text[:40]!r}"
    for where, text in [*fields, ("caption", rendered)]:
        if run := _char_run(text, config):
            return f"repetitive: {run[:12]!r}... in {where} (one character {len(run)} times)"
        if problem := _loop_problem(text, config):
            return f"{problem} in {where}"
    if len(_words(rendered)) < config.min_words:
        return f"empty caption: {len(_words(rendered))} words"
    # Degenerate models loop inside one field; a long healthy caption would dilute that loop.
    for where, text in [("caption", rendered), *fields]:
        if problem := repetition_problem(_words(text), config):
            return f"{problem} in {where}"
        if problem := _compression_problem(text, config, whole=where == "caption"):
            return f"{problem} in {where}"
    for where, text in fields:
        if not where.startswith(_VERBATIM) and (problem := _garbage_problem(text, config)):
            return f"{problem} in {where}"
    return None


def judge_text(text: str, config: QualityConfig, confidence: Confidence | None = None) -> str | None:
    """Why a dense caption's prose alone (a manifest's ``caption`` column, without its structure) or its
    recorded confidence would be refused, or None: loops, runs, repeated n-grams, zlib ratio, confidence."""
    if run := _char_run(text, config):
        return f"repetitive: {run[:12]!r}... (one character {len(run)} times)"
    return (
        _loop_problem(text, config)
        or repetition_problem(_words(text), config)
        or _compression_problem(text, config, whole=True)
        or confidence_problem(confidence, config)
    )


def confidence_problem(confidence: Confidence | None, config: QualityConfig) -> str | None:
    """Why the model's own log-probabilities say the output is not to be trusted, or None."""
    if confidence is None:
        return None
    floor, window = config.min_mean_logprob, config.min_window_logprob
    if floor is not None and confidence.mean_logprob < floor:
        return f"low confidence: mean token log-prob {confidence.mean_logprob:.3f} under the floor {floor:g}"
    if window is not None and confidence.min_window_logprob < window:
        return (
            f"low confidence: a {config.logprob_window}-token window averages "
            f"{confidence.min_window_logprob:.3f}, under the floor {window:g}"
        )
    return None


def _char_run(text: str, config: QualityConfig) -> str | None:
    """The first run of one non-space character at least ``max_char_run`` long, or None."""
    runs = (m.group(0) for m in _CHAR_RUN.finditer(text))
    return next((run for run in runs if len(run) >= config.max_char_run), None)


def _loop_problem(text: str, config: QualityConfig) -> str | None:
    if config.loop_min_repeats is None:
        return None
    loop = longest_loop(text, config.loop_min_repeats, config.loop_max_unit)
    if loop is not None and loop.chars >= config.loop_min_chars:
        return f"loop: {loop.describe()}"
    return None


def _compression_problem(text: str, config: QualityConfig, whole: bool) -> str | None:
    limit = config.max_compression_ratio if whole else config.max_field_compression_ratio
    if limit is None or len(text) < config.compression_min_chars:
        return None
    ratio = compression_ratio(text)
    return f"compresses like a loop: zlib ratio {ratio:.2f} over {limit:g}" if ratio > limit else None


def _garbage_problem(text: str, config: QualityConfig) -> str | None:
    """Number and punctuation garbage, or brackets that do not balance, in a field typed as prose."""
    if config.balanced_brackets and (bracket := unbalanced_bracket(text)):
        return f"unbalanced bracket {bracket!r}"
    share = symbol_share(text)
    if (
        config.max_symbol_share is not None
        and len(text.split()) >= config.symbol_min_tokens
        and share > config.max_symbol_share
    ):
        limit = config.max_symbol_share
        return f"number/punctuation garbage: {share:.0%} of tokens have no letter (limit {limit:.0%})"
    run = longest_symbol_run(text)
    if config.max_symbol_run is not None and len(run) >= config.max_symbol_run:
        return f"punctuation garbage: {run[:16]!r} ({len(run)} symbols in a row)"
    number = longest_number(text)
    if config.max_number_digits is not None and len(number) >= config.max_number_digits:
        return f"number garbage: a {len(number)}-digit number ({number[:16]}...)"
    return None


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def caption_fields(node: object, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a caption's dump with its dotted path (``subjects.0.motion``)."""
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from caption_fields(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from caption_fields(value, f"{where}.{i}")


def repetition_problem(words: list[str], config: QualityConfig) -> str | None:
    """Why ``words`` look degenerate (runs of one word, mostly repeated n-grams), or None."""
    run, longest = 1, 1
    for prev, word in itertools.pairwise(words):
        run = run + 1 if word == prev else 1
        longest = max(longest, run)
    if longest >= config.max_same_word_run:
        return f"repetitive: one word repeated {longest} times in a row"
    n = config.ngram
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 4:
        return None
    repeats = sum(count - 1 for count in Counter(grams).values())
    share = repeats / len(grams)
    if share > config.max_repeated_ngrams:
        return f"repetitive: {share:.0%} of {n}-grams repeat"
    return None
