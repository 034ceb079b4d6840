"""``dataengine inspect OUT``: what a run produced, in numbers and in pictures.

Counts by status and by shard bucket (latent shape), failure reasons by stage, distributions of caption
length (words) and clip duration from the manifest, and ``OUT/contact_sheet.html``: each sample's preview
frame beside its caption, read from the shards with webdataset's tar reader. What curation kept and dropped:
``pipelines.inspect_curation``. ``OUT`` is a folder or a URL (``s3://bucket/run``), read and written through
its ``Store``; a run written by several drivers (``--partition``) reads as one, with each partition's status.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataengine.caption.quality import QualityConfig
from dataengine.shards import read_manifest
from dataengine.storage import Store
from pipelines.inspect_curation import CurationInspection, inspect_curation
from pipelines.regate import check_of, committed_shards, shard_samples, suspicious

SHEET = "contact_sheet.html"
PARTITIONS_DIR = "runs"  # runs/p01of04.json: one partition's attempts (written by pipelines.report)


@dataclass
class Distribution:
    n: int
    min: float
    p10: float
    p50: float
    p90: float
    max: float
    histogram: list[tuple[float, float, int]] = field(default_factory=list)  # (from, to, count)

    @classmethod
    def of(cls, values: list[float], bins: int = 8) -> Distribution | None:
        if not values:
            return None
        data = np.asarray(values, dtype=float)
        counts, edges = np.histogram(data, bins=bins)
        p10, p50, p90 = (float(v) for v in np.percentile(data, [10, 50, 90]))
        hist = [(float(a), float(b), int(c)) for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)]
        return cls(len(data), float(data.min()), p10, p50, p90, float(data.max()), hist)


@dataclass
class Inspection:
    out_dir: str  # the run's folder or URL
    by_status: dict[str, int]
    reasons: list[tuple[str, str, int]]  # (stage, reason, count), most frequent first
    caption_words: Distribution | None
    clip_seconds: Distribution | None
    caption_mean_logprob: Distribution | None
    caption_compression: Distribution | None
    suspicious: list[tuple[str, str]]  # ok captions today's gate would refuse: (clip id, reason)
    shards: int
    shard_bytes: int
    sheet: str | None  # where the contact sheet went (a path, or a URL beside a remote run)
    curation: CurationInspection | None = None
    buckets: dict[str, int] = field(default_factory=dict)  # ok samples per shard bucket, most first
    partitions: dict[str, str] = field(default_factory=dict)  # p01of04 -> its latest attempt's status

    def as_json(self) -> dict[str, Any]:
        skip = ("out_dir", "sheet", "curation")
        doc: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k not in skip}
        doc["curation"] = self.curation.as_json() if self.curation is not None else None
        for key in ("caption_words", "clip_seconds", "caption_mean_logprob", "caption_compression"):
            value = getattr(self, key)
            doc[key] = value.__dict__ if value is not None else None
        return {"out_dir": self.out_dir, "sheet": self.sheet, **doc}


def inspect_run(
    run: Store | str | Path, max_samples: int = 64, gate: QualityConfig | None = None
) -> Inspection:
    """Read the run's manifest and shards; write the HTML contact sheet of up to ``max_samples`` samples
    into it; flag the ok captions that ``gate`` (default: today's default gate) would refuse on their text and
    recorded confidence.

    Raises:
        FileNotFoundError: ``run`` holds no manifest (not a run, or a run that committed nothing).
    """
    store = Store(run)
    if not any(n.endswith(".parquet") for n in store.listdir("manifest")):
        raise FileNotFoundError(f"{store.url} has no manifest/*.parquet: is it the --out of dataengine run?")
    rows = read_manifest(store).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    reasons = Counter((r["stage"] or "", _reason(r)) for r in rows if r["status"] != "ok")
    shards = committed_shards(store)
    return Inspection(
        out_dir=store.url,
        by_status=dict(Counter(r["status"] for r in rows)),
        reasons=[(stage, reason, n) for (stage, reason), n in reasons.most_common()],
        caption_words=Distribution.of([len((r["caption"] or "").split()) for r in ok]),
        clip_seconds=Distribution.of([r["end_s"] - r["start_s"] for r in ok if r["end_s"] is not None]),
        caption_mean_logprob=Distribution.of(_present(ok, "caption_mean_logprob")),
        caption_compression=Distribution.of(_present(ok, "caption_compression_ratio")),
        suspicious=suspicious(rows, gate or QualityConfig()),
        shards=len(shards),
        shard_bytes=sum(shards.values()),
        sheet=_write_sheet(store, max_samples) if shards else None,
        curation=inspect_curation(store, rows),
        buckets=dict(Counter(r["bucket"] for r in ok if r["bucket"] is not None).most_common()),
        partitions=_partitions(store),
    )


def _partitions(store: Store) -> dict[str, str]:
    """Each partition's latest status (``runs/p01of04.json``); empty for a run of one driver."""
    found = {}
    for name in store.listdir(PARTITIONS_DIR):
        if name.endswith(".json") and not name.startswith("."):
            found[name.removesuffix(".json")] = json.loads(store.read_bytes(PARTITIONS_DIR, name))["status"]
    return found


def _present(rows: list[dict[str, Any]], column: str) -> list[float]:
    return [r[column] for r in rows if r[column] is not None]


def _reason(row: dict[str, Any]) -> str:
    """The reason without per-file detail (paths, numbers after a colon), so equal causes group together;
    a caption the gate refused groups by the check that refused its first attempt."""
    error = row["error"] or ""
    if row["stage"] == "caption" and "failed the quality gate" in error:
        return f"quality gate: {check_of(error.split(' attempts: ', 1)[-1])}"
    return error.split(" | ")[0].split(": /")[0][:160]


def _write_sheet(store: Store, max_samples: int) -> str:
    cards: list[str] = []
    for sample in shard_samples(store):
        if len(cards) >= max_samples:
            break
        meta = json.loads(sample["json"])
        image = base64.b64encode(sample["jpg"]).decode() if "jpg" in sample else ""
        span = f"{meta.get('start_s', 0):.2f}-{meta.get('end_s', 0):.2f} s"
        cards.append(
            f'<div class="card"><img src="data:image/jpeg;base64,{image}" alt="preview">'
            f"<p class=meta>{html.escape(meta.get('source', ''))} · {span} · "
            f"{html.escape(sample['__key__'])}</p>"
            f"<p class=short>{html.escape(meta.get('short_caption') or '')}</p>"
            f"<p>{html.escape(sample['txt'].decode())}</p></div>"
        )
    page = _PAGE.format(title=html.escape(store.url), n=len(cards), cards="\n".join(cards))
    store.write_bytes(SHEET, data=page.encode())
    return store.uri(SHEET)


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; background: #fafafa; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1em; }}
.card {{ background: white; border: 1px solid #ddd; border-radius: 6px; padding: .6em; }}
.card img {{ width: 100%; image-rendering: pixelated; }}
.meta {{ color: #777; font-size: 11px; word-break: break-all; }} .short {{ font-weight: 600; }}
</style></head><body><h1>{title}</h1><p>{n} samples, preview frame and dense caption</p>
<div class="grid">{cards}</div></body></html>
"""
