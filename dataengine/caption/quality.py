"""The quality gate every engine output passes before it becomes a caption.

Rejects: empty output, output truncated by the token limit, output that does not parse into the schema,
refusals, degenerate repetition, and structures with nothing in them. A rejection carries a short reason;
the caption stage retries with changed sampling and records the reasons when it gives up.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass

from pydantic import Field, ValidationError

from dataengine.caption.schema import StructuredCaption, render_caption
from dataengine.config import StageConfig

_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i cannot|i can'?t|i am unable|i'?m unable|as an ai|cannot (help|assist)|"
    r"unable to (help|assist|describe|view|see)|no video (was|is) (provided|attached))\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[\w']+")
# JSON escapes let a model emit control characters (unpaired surrogates already fail JSON parsing).
_CHAR_RUN = re.compile(r"(\S)\1{11,}")
_INVALID_CHAR = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


class QualityConfig(StageConfig):
    ngram: int = Field(3, ge=1, description="word n-gram size for the repetition test")
    max_repeated_ngrams: float = Field(
        0.3, gt=0, le=1, description="reject when this share of n-grams are repeats of earlier ones"
    )
    max_same_word_run: int = Field(
        8, ge=2, description="reject when one word repeats this many times in a row"
    )
    min_words: int = Field(3, ge=1, description="fewer words in the rendered caption is empty")


@dataclass(frozen=True)
class Verdict:
    """A passed structure (``caption`` set) or a rejection (``reason`` set)."""

    caption: StructuredCaption | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.caption is not None


def judge(
    text: str, finish_reason: str | None, config: QualityConfig, duration_s: float | None = None
) -> Verdict:
    """Judge one engine output (the raw text and why generation stopped); with ``duration_s``, event times
    must lie within the clip (with a one-second margin)."""
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
    strings = _strings(caption.model_dump())
    bad = next((s for s in strings if _INVALID_CHAR.search(s)), None)
    if bad is not None:
        return Verdict(reason=f"invalid characters (control codes) in {bad[:40]!r}")
    if duration_s is not None:
        late = [
            e for e in caption.events if max(e.start_s, e.end_s) > duration_s + 1.0 or e.end_s < e.start_s
        ]
        if late:
            e = late[0]
            return Verdict(
                reason=f"event at {e.start_s:g}-{e.end_s:g} s lies outside the {duration_s:.1f} s clip"
            )
    if match := _CHAR_RUN.search(" ".join(strings)):
        return Verdict(
            reason=f"repetitive: {match.group(0)[:12]!r}... (one character {len(match.group(0))} times)"
        )
    words = _words(render_caption(caption))
    if len(words) < config.min_words:
        return Verdict(reason=f"empty caption: {len(words)} words")
    # Degenerate models loop inside one field; a long healthy caption would dilute that loop.
    for text in (" ".join(words), *strings):
        problem = repetition_problem(_words(text), config)
        if problem:
            return Verdict(reason=problem)
    return Verdict(caption=caption)


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


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
