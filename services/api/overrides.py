"""Which recipe keys a job's ``overrides`` may change: tuning knobs, never what the service loads, reads or
sends.

A key is allowed when it equals a pattern or lies under one; ``*`` stands for one key of any name. The
patterns name no model, path, URL, environment variable, engine or free keyword arguments, nor worker counts
and their CPU, GPU and memory reservations. An operator adds patterns with ``DATAENGINE_EXTRA_OVERRIDES``; the
sections that decide where the service reads and how runs are driven (``RESERVED``) stay out of reach.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["RESERVED", "SAFE_OVERRIDES", "is_pattern", "refused"]

# fmt: off
SAFE_OVERRIDES = (
    "split",                                   # windows, shot detection and its time limit
    "decode.views.*",                          # rate, frame count and size of the recipe's views
    "decode.timeout_s", "decode.min_frame_ratio", "decode.threads", "decode.max_clips_per_pass",
    "caption.sampling",                        # temperature, top_p, max_tokens, repetition_penalty, seed
    "caption.quality",                         # the gate's thresholds
    "caption.max_attempts", "caption.retry_temperature", "caption.window_frames", "caption.guided",
    "caption.verify.min_psnr_db",
    "encode.vae.batch_size", "encode.vae.frame_rule",
    "text.max_tokens", "text.batch_size",
    "filters.enabled", "filters.phash_frames",  # curation: every bound of every score, not its models
    "filters.*.enabled", "filters.*.min", "filters.*.max", "filters.*.score_only",
    "dedup.enabled", "dedup.exact", "dedup.max_distance", "dedup.min_match_fraction",
    "shards.max_samples", "shards.max_bytes",
    "pools.*.batch_size", "pools.*.max_in_flight",
)
# fmt: on
RESERVED = ("inputs", "probe", "runner")  # where a job reads, fetches and how it runs: the server's settings
_KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_PATTERN = re.compile(r"(\*|[A-Za-z0-9_]+)(\.(\*|[A-Za-z0-9_]+))*")


def refused(keys: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The keys no pattern allows (malformed keys included), in their order."""
    split = [pattern.split(".") for pattern in patterns]
    return [
        key for key in keys if not (_KEY.fullmatch(key) and any(_under(key.split("."), p) for p in split))
    ]


def is_pattern(text: str) -> bool:
    """Whether ``text`` is a dotted key pattern outside ``RESERVED`` (what an operator may add)."""
    return bool(_PATTERN.fullmatch(text)) and text.split(".")[0] not in (*RESERVED, "*")


def _under(parts: list[str], pattern: list[str]) -> bool:
    return len(parts) >= len(pattern) and all(p in ("*", k) for k, p in zip(parts, pattern, strict=False))
