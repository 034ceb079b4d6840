"""The measurements the quality gate makes on one caption: loops, compressibility, symbol garbage, brackets,
and the model's own confidence. Pure functions of text or token log-probabilities, no thresholds: the gate
(``quality.py``) decides what is too much, so the same numbers can be recorded, plotted and re-judged later.

Why these: a small or out-of-domain captioner that has lost track of the clip does not stop, it cycles, and
the cycle can sit inside a word (``motionmotionmotion``), across words (``left, left, left``) or across
fields. Such text also compresses far better than prose (Whisper's decoder rejects transcripts whose zlib
ratio is over 2.4 for the same reason), and the model is usually unsure while it writes it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_BRACKETS = {")": "(", "]": "[", "}": "{"}
_HAS_LETTER = re.compile(r"[^\W\d_]")
_SYMBOL_RUN = re.compile(r"[^\w\s]+")
_DIGIT_RUN = re.compile(r"\d+")


@dataclass(frozen=True)
class Loop:
    """A unit of text repeated back to back: ``unit`` occurs ``repeats`` times, covering ``chars``."""

    unit: str
    repeats: int
    chars: int

    def describe(self) -> str:
        return f"{self.unit[:24]!r} repeated {self.repeats} times in a row ({self.chars} characters)"


def longest_loop(text: str, min_repeats: int = 2, max_unit: int = 40, min_unit: int = 2) -> Loop | None:
    """Of the units of ``min_unit``..``max_unit`` characters repeated at least ``min_repeats`` times back to
    back, the repetition that covers the most text; None when there is none.

    A unit of length L repeats k times in a row exactly where ``text[i] == text[i + L]`` holds for
    (k - 1) * L consecutive positions, so each L costs one vectorised comparison: linear time, no regex
    backtracking, inside words and across them alike.
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    best: Loop | None = None
    for size in range(min_unit, min(max_unit, len(codes) // 2) + 1):
        same = np.concatenate(([False], codes[:-size] == codes[size:], [False]))
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))
        if len(edges) == 0:
            continue
        starts, ends = edges[::2], edges[1::2]
        k = int(np.argmax(ends - starts))
        chars = int(ends[k] - starts[k]) + size
        if chars // size >= min_repeats and (best is None or chars > best.chars):
            start = int(starts[k])
            best = Loop(text[start : start + size], chars // size, chars)
    return best


def compression_ratio(text: str) -> float:
    """UTF-8 length over zlib-compressed length (level 9): ~1-2 for prose, higher for loops; 0 for ''."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data, 9)) if data else 0.0


def symbol_share(text: str) -> float:
    """The share of whitespace-separated tokens with no letter in them (numbers, punctuation)."""
    tokens = text.split()
    if not tokens:
        return 0.0
    return sum(not _HAS_LETTER.search(t) for t in tokens) / len(tokens)


def longest_symbol_run(text: str) -> str:
    """The longest run of punctuation and symbols with no letter, digit or space between them."""
    return max(_SYMBOL_RUN.findall(text), key=len, default="")


def longest_number(text: str) -> str:
    """The longest run of digits."""
    return max(_DIGIT_RUN.findall(text), key=len, default="")


def unbalanced_bracket(text: str) -> str | None:
    """The first bracket that is never closed or closes nothing, or None when (), [] and {} balance."""
    stack: list[str] = []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in _BRACKETS and (not stack or stack.pop() != _BRACKETS[char]):
            return char
    return stack[0] if stack else None


@dataclass(frozen=True)
class Confidence:
    """What the model's own token log-probabilities say about one output."""

    tokens: int
    mean_logprob: float
    min_window_logprob: float  # the lowest mean over any ``window`` consecutive tokens

    @classmethod
    def of(cls, logprobs: Sequence[float], window: int = 16) -> Confidence | None:
        """None when there are no log-probabilities (the engine reported none)."""
        if not logprobs:
            return None
        values = np.asarray(logprobs, dtype=np.float64)
        values = np.where(np.isfinite(values), values, -100.0)  # -inf: a token the model ruled out
        size = min(window, len(values))
        sums = np.convolve(values, np.ones(size), mode="valid")
        return cls(len(values), float(values.mean()), float(sums.min() / size))

    @classmethod
    def merge(cls, parts: Sequence[Confidence | None]) -> Confidence | None:
        """Token-weighted mean and the worst window over several outputs (windows of one clip, retries
        excluded); None when any part lacks log-probabilities."""
        if not parts or any(p is None for p in parts):
            return None
        known = [p for p in parts if p is not None]
        tokens = sum(p.tokens for p in known)
        mean = sum(p.mean_logprob * p.tokens for p in known) / max(1, tokens)
        return cls(tokens, mean, min(p.min_window_logprob for p in known))
