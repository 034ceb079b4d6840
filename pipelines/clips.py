"""Inputs -> probe -> split -> decode in this process, writing what came out where people can look at it.

DIR/clips.jsonl       one Clip record per decoded clip, with the shape of every decoded view
DIR/failures.jsonl    one Failure record per input, video or span that did not make it (stage + reason)
DIR/contact_sheet.jpg frames of the first clips' first view
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataengine.inputs import InputsConfig, iter_sources
from dataengine.preview import contact_sheet
from dataengine.records import DecodedClip, Failure
from dataengine.stages import (
    DecodeConfig,
    DecodeStage,
    ProbeConfig,
    ProbeStage,
    SplitConfig,
    SplitStage,
    Stage,
)
from pipelines.local import run_chain

_SHEET_ROWS = 32


@dataclass
class ClipsReport:
    out_dir: Path
    clips: int = 0
    frames: Counter[str] = field(default_factory=Counter)
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    videos: set[str] = field(default_factory=set)

    @property
    def files(self) -> dict[str, Path]:
        return {name: self.out_dir / name for name in ("clips.jsonl", "failures.jsonl", "contact_sheet.jpg")}


def extract_clips(
    specs: Iterable[str],
    out_dir: Path,
    probe: ProbeConfig | None = None,
    split: SplitConfig | None = None,
    decode: DecodeConfig | None = None,
    inputs: InputsConfig | None = None,
    on_result: Callable[[DecodedClip | Failure], None] | None = None,
) -> ClipsReport:
    """Run the clip stages over ``specs`` and write the files listed in the module docstring."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ClipsReport(out_dir)
    stages: list[Stage[Any, Any]] = [ProbeStage(probe), SplitStage(split), DecodeStage(decode)]
    decoded: list[DecodedClip] = []
    sources = iter_sources(specs, inputs or InputsConfig())
    with report.files["clips.jsonl"].open("w") as clips_f, report.files["failures.jsonl"].open("w") as fail_f:
        for result in run_chain(stages, sources):
            if isinstance(result, Failure):
                fail_f.write(result.model_dump_json() + "\n")
                report.failures[(result.stage, result.kind)] += 1
            else:
                shapes = {name: list(v.shape) for name, v in result.views.items()}
                clips_f.write(json.dumps({**result.clip.model_dump(mode="json"), "views": shapes}) + "\n")
                report.clips += 1
                report.videos.add(result.clip.video_id)
                for name, view in result.views.items():
                    report.frames[name] += view.shape[0]
                if len(decoded) < _SHEET_ROWS:
                    decoded.append(_thumbnail(result))
            if on_result is not None:
                on_result(result)
    if decoded:
        contact_sheet(decoded, next(iter(decoded[0].views)), report.files["contact_sheet.jpg"])
    return report


def _thumbnail(clip: DecodedClip, n: int = 6) -> DecodedClip:
    """Keep only what the contact sheet needs: ``n`` frames of the first view."""
    name, frames = next(iter(clip.views.items()))
    return DecodedClip(clip=clip.clip, views={name: frames.subsample(n)})
