"""Today's caption gate on a run written earlier, without captioning again.

``suspicious`` reads only the manifest: each ok row's dense caption through the gate's text checks (loops,
character runs, repeated n-grams, zlib ratio) and its recorded confidence columns through the confidence
floors. Cheap at any size, and it works on runs written before the gate or the columns existed.

``regate_run`` is the full gate: every ok sample's structured caption, read from the shards' ``json``
(plain webdataset), through ``quality.judge_caption`` with the confidence the sample recorded (older samples
have none: they are judged on their text). It reports what it would refuse and why, and the clip ids it
keeps, which ``write_keep_list`` writes one per line for a loader to filter on (``__key__`` in the list).
The redraw verifier (``caption.verify``) needs the frames and is not re-applied here.

A run is read through its ``Store`` (a folder or a URL such as ``s3://bucket/run``): ``committed_shards``
and ``shard_samples`` are how the readers of a finished run (inspect, regate, dedup) see its shards.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webdataset.tariterators import group_by_keys, tar_file_expander

from dataengine.caption.quality import QualityConfig, judge_caption, judge_text
from dataengine.caption.schema import StructuredCaption
from dataengine.caption.signals import Confidence
from dataengine.storage import Store, transport_errors

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class Regate:
    """What today's gate makes of a run's ok samples."""

    checked: int = 0
    keep: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (clip id, reason)

    def reasons(self) -> list[tuple[str, int]]:
        """Refusals per check (the reason's words before its first colon), most frequent first."""
        return Counter(check_of(reason) for _, reason in self.refused).most_common()

    def as_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "kept": len(self.keep),
            "refused": len(self.refused),
            "reasons": dict(self.reasons()),
            "refusals": [{"clip_id": c, "reason": r} for c, r in self.refused],
        }


def check_of(reason: str) -> str:
    """Which check a gate reason comes from: ``loop``, ``low confidence``, ``unbalanced bracket ')'``, ...
    (numbers become N, so that equal checks group)."""
    return _NUMBER.sub("N", reason.split(":")[0].split(" in ")[0])


def suspicious(rows: list[dict[str, Any]], config: QualityConfig) -> list[tuple[str, str]]:
    """(clip id, reason) of every ok manifest row (``read_manifest(...).to_pylist()``) the gate's text and
    confidence checks would refuse."""
    found = []
    for row in rows:
        clip_id, caption = row["clip_id"], row["caption"]
        mean, window = row["caption_mean_logprob"], row["caption_min_window_logprob"]
        if row["status"] != "ok" or caption is None:
            continue
        confidence = Confidence(0, mean, window) if mean is not None and window is not None else None
        if reason := judge_text(caption, config, confidence):
            found.append((clip_id, reason))
    return found


def regate_run(run: Store | str | Path, config: QualityConfig) -> Regate:
    """The full gate on every sample in the run's committed shards (their json members only are parsed).

    Raises:
        FileNotFoundError: no shards in ``run``.
    """
    store = Store(run)
    if not committed_shards(store):
        raise FileNotFoundError(f"{store.url} has no shards/*.tar: is it the --out of dataengine run?")
    result = Regate()
    only_json = lambda name: name.endswith(".json")  # noqa: E731 - latents stay unread
    for sample in shard_samples(store, only_json):
        meta = json.loads(sample["json"])
        result.checked += 1
        verdict = judge_caption(
            StructuredCaption.model_validate(meta["structured"]), config, _confidence(meta)
        )
        if verdict.ok:
            result.keep.append(sample["__key__"])
        else:
            result.refused.append((sample["__key__"], verdict.reason or "refused"))
    return result


def committed_shards(store: Store) -> dict[str, int]:
    """The run's shards that have their manifest part (a crash may leave a ``.tar`` without one), name ->
    bytes, in name order; empty when there are none."""
    committed = set(store.listdir("manifest"))
    names = [n for n in store.listdir("shards") if n.endswith(".tar") and not n.startswith(".")]
    names = [n for n in names if f"{n.removesuffix('.tar')}.parquet" in committed]
    if not names:
        return {}
    with transport_errors(store.uri("shards")):
        entries = store.fs.ls(store.path("shards"), detail=True)
    sizes = {posixpath.basename(e["name"].rstrip("/")): int(e["size"]) for e in entries}
    return {n: sizes[n] for n in names}


def shard_samples(store: Store, select: Callable[[str], bool] | None = None) -> Iterator[dict[str, Any]]:
    """Every sample of the run's committed shards, as webdataset groups them (``{"__key__", "json": bytes,
    ...}``), shard by shard in name order; ``select`` picks the members read (by file name)."""
    for name in committed_shards(store):
        uri = store.uri("shards", name)
        with transport_errors(uri), store.fs.open(store.path("shards", name), "rb") as stream:
            yield from group_by_keys(tar_file_expander([{"url": uri, "stream": stream}], select_files=select))


def write_keep_list(regate: Regate, path: Path) -> Path:
    """The kept clip ids, one per line, written atomically."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(f"{key}\n" for key in regate.keep))
    partial.replace(path)
    return path


def _confidence(meta: dict[str, Any]) -> Confidence | None:
    scores = meta.get("caption_scores") or {}
    mean, window = scores.get("mean_logprob"), scores.get("min_window_logprob")
    return Confidence(0, mean, window) if mean is not None and window is not None else None
