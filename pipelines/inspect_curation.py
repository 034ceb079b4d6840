"""What curation did to a run: each score's distribution (kept vs dropped), drops per check, and pictures.

Read from the manifest alone (every clip that reached the filters has its scores there, kept or dropped),
and written into the run through its ``Store`` (a folder, or a URL such as ``s3://bucket/run``):

``RUN_DIR/curation.png``            one histogram per score, kept and dropped stacked, thresholds marked
``RUN_DIR/dropped_sheet.jpg``       dropped clips (filters and duplicates), re-decoded from their local
                                    sources, each labelled with the check that dropped it and its score
"""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataengine.curate.filters import FiltersConfig
from dataengine.curate.scores import SCORES
from dataengine.preview import contact_sheet
from dataengine.records import Clip, DecodedClip, Source, Video
from dataengine.stages import DecodeConfig, DecodeStage, ProbeConfig, ProbeStage, ViewConfig
from dataengine.storage import Store

log = logging.getLogger(__name__)

HISTOGRAMS, DROPPED_SHEET = "curation.png", "dropped_sheet.jpg"
_CURATION_STAGES = ("filter", "dedup")


@dataclass
class ScoreSummary:
    """One score over a run: values of the clips curation passed on (captioned or not) and of those it
    dropped, its bounds, and how many it dropped."""

    name: str
    unit: str
    kept: list[float]
    dropped: list[float]
    bounds: dict[str, float | None] | None
    dropped_by: int

    def percentiles(self) -> tuple[float, float, float] | None:
        values = sorted(self.kept + self.dropped)
        if not values:
            return None
        pick = [values[min(len(values) - 1, round(q * (len(values) - 1)))] for q in (0.1, 0.5, 0.9)]
        return pick[0], pick[1], pick[2]


@dataclass
class CurationInspection:
    scores: list[ScoreSummary]
    drops: list[tuple[str, str, int]]  # (stage, check, clips), most first
    reached: int  # clips that reached the filters
    kept: int  # of those, clips the filters and the duplicate index passed on to captioning
    histograms: str | None = None  # where the pictures went: paths, or URLs beside a remote run
    dropped_sheet: str | None = None
    thresholds: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "reached": self.reached,
            "kept": self.kept,
            "drops": self.drops,
            "thresholds": self.thresholds,
            "scores": {s.name: _score_json(s) for s in self.scores},
            "histograms": self.histograms,
            "dropped_sheet": self.dropped_sheet,
        }


def _score_json(s: ScoreSummary) -> dict[str, Any]:
    return {
        "unit": s.unit,
        "percentiles_10_50_90": s.percentiles(),
        "dropped_by": s.dropped_by,
        "bounds": s.bounds,
        "n_kept": len(s.kept),
        "n_dropped": len(s.dropped),
    }


def inspect_curation(
    run: Store | str | Path, rows: Sequence[dict[str, Any]], pictures: bool = True, max_dropped: int = 24
) -> CurationInspection | None:
    """Summarise the curation of ``rows`` (the run's manifest rows); None when no clip has scores (a run
    made before the filters existed, or with ``filters.enabled=false``). ``pictures`` writes the histogram
    figure and the dropped clips' contact sheet into the run."""
    store = Store(run)
    scored = [r for r in rows if any(_value(r, name) is not None for name in SCORES)]
    if not scored:
        return None
    thresholds = _thresholds(store)
    dropped = [r for r in scored if r["status"] == "dropped" and r["stage"] in _CURATION_STAGES]
    checks = Counter((r["stage"], _check(r)) for r in dropped)
    summaries = []
    for name, (unit, _) in SCORES.items():
        passed = (r for r in scored if r["stage"] not in _CURATION_STAGES)
        kept = [v for r in passed if (v := _value(r, name)) is not None]
        gone = [v for r in dropped if (v := _value(r, name)) is not None]
        if kept or gone:
            by = sum(n for (stage, check), n in checks.items() if stage == "filter" and check == name)
            summaries.append(ScoreSummary(name, unit, kept, gone, thresholds.get(name), by))
    found = CurationInspection(
        scores=summaries,
        drops=[(stage, check, n) for (stage, check), n in checks.most_common()],
        reached=len(scored),
        kept=sum(r["stage"] not in ("filter", "dedup") for r in scored),
        thresholds=thresholds,
    )
    if pictures:
        found.histograms = _plot(store, summaries)
        found.dropped_sheet = _dropped_sheet(store, dropped[:max_dropped])
    return found


def _value(row: dict[str, Any], name: str) -> float | None:
    value = row.get(name)
    return None if value is None or math.isnan(value) else float(value)


def _check(row: dict[str, Any]) -> str:
    """The check a drop's reason names: the score (``motion 0.001 < 0.01 ...``) or the kind of duplicate."""
    words = (row["error"] or "").split()
    if row["stage"] == "dedup":
        return " ".join(words[:2]) if words else "duplicate"
    return words[0] if words else "?"


def _thresholds(store: Store) -> dict[str, dict[str, float | None]]:
    """The filters' bounds from ``run.json`` (what the run used), else the defaults."""
    config = json.loads(store.read_bytes("run.json")).get("config", {}) if store.exists("run.json") else {}
    try:
        return FiltersConfig.model_validate(config.get("filters", {})).thresholds()
    except ValueError as exc:  # a run.json from another version: say so, show no thresholds
        log.warning("run.json's filters do not validate (%s); thresholds not shown", exc)
        return {}


def _plot(store: Store, summaries: list[ScoreSummary]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = max(1, math.ceil(len(summaries) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, summary in zip(axes.flat, summaries, strict=False):
        values = summary.kept + summary.dropped
        bins = 20 if max(values) > min(values) else 1
        ax.hist([summary.kept, summary.dropped], bins=bins, stacked=True, color=["#3a7", "#c44"],
                label=["kept", "dropped"])  # fmt: skip
        for key in ("min", "max"):
            limit = (summary.bounds or {}).get(key)
            if limit is not None:
                ax.axvline(limit, color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{summary.name} ({summary.unit})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(summaries) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("curation scores: kept (green) and dropped (red); dashed: thresholds", fontsize=10)
    fig.tight_layout()
    figure = io.BytesIO()
    fig.savefig(figure, format="png", dpi=90)
    plt.close(fig)
    store.write_bytes(HISTOGRAMS, data=figure.getvalue())
    return store.uri(HISTOGRAMS)


def _dropped_sheet(store: Store, dropped: list[dict[str, Any]]) -> str | None:
    """Re-decode the dropped clips from their sources (local files only; each probed once, the clips of one
    video in one decode pass) and lay them out with their reasons."""
    probe = ProbeStage(ProbeConfig())
    decode = DecodeStage(DecodeConfig(views={"sheet": ViewConfig(fps=2, max_frames=6, size=96)}))
    videos: dict[str, Video | None] = {}
    clips: list[Clip] = []
    labels: list[str] = []
    for row in sorted(dropped, key=lambda r: (r["source"], r["start_s"])):
        source = Source.from_uri(row["source"])
        if source.uri not in videos:
            found = (
                probe.process_batch([source])[0] if source.is_local and source.local_path.exists() else None
            )
            videos[source.uri] = found if isinstance(found, Video) else None
        video = videos[source.uri]
        if video is not None:
            clips.append(Clip.of(video, 0, row["start_s"], row["end_s"]))
            labels.append(f"{row['stage']}: {row['error']}")
    decoded = decode.process_batch(clips) if clips else []
    shown = [(d, label) for d, label in zip(decoded, labels, strict=True) if isinstance(d, DecodedClip)]
    if not shown:
        return None
    with tempfile.TemporaryDirectory() as tmp:  # contact_sheet writes a file; the run may be remote
        captions = [label for _, label in shown]
        sheet = contact_sheet([d for d, _ in shown], "sheet", Path(tmp) / DROPPED_SHEET, captions=captions)
        store.write_bytes(DROPPED_SHEET, data=sheet.read_bytes())
    return store.uri(DROPPED_SHEET)
