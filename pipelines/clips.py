"""Inputs -> probe -> split -> decode (-> caption) in this process, writing what came out where people can
look at it.

DIR/clips.jsonl       one record per clip: the Clip, the shape of every decoded view, and its caption if any
DIR/failures.jsonl    one Failure record per input, video or span that did not make it (stage + reason)
DIR/contact_sheet.jpg frames of the first clips' first view, with their captions
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
from dataengine.records import CaptionedClip, DecodedClip, Failure
from dataengine.stages import (
    DecodeConfig,
    DecodeStage,
    ProbeConfig,
    ProbeStage,
    SplitConfig,
    SplitStage,
    Stage,
)
from dataengine.stages.caption import CaptionConfig, CaptionStage
from pipelines.local import run_chain

_SHEET_ROWS = 32


@dataclass
class ClipsReport:
    out_dir: Path
    clips: int = 0
    frames: Counter[str] = field(default_factory=Counter)
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    videos: set[str] = field(default_factory=set)
    captioned: int = 0

    def count(self, decoded: DecodedClip, captioned: bool) -> None:
        self.clips += 1
        self.captioned += captioned
        self.videos.add(decoded.clip.video_id)
        for name, view in decoded.views.items():
            self.frames[name] += view.shape[0]

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
    caption: CaptionConfig | None = None,
    on_result: Callable[[DecodedClip | CaptionedClip | Failure], None] | None = None,
) -> ClipsReport:
    """Run the clip stages (and the caption stage, given its config) over ``specs``; write the files listed
    in the module docstring."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ClipsReport(out_dir)
    stages: list[Stage[Any, Any]] = [ProbeStage(probe), SplitStage(split), DecodeStage(decode)]
    if caption is not None:
        stages.append(CaptionStage(caption))
    sheet: list[tuple[DecodedClip, str]] = []
    sources = iter_sources(specs, inputs or InputsConfig())
    with report.files["clips.jsonl"].open("w") as clips_f, report.files["failures.jsonl"].open("w") as fail_f:
        for result in run_chain(stages, sources, batch_size=8):
            if isinstance(result, Failure):
                fail_f.write(result.model_dump_json() + "\n")
                report.failures[(result.stage, result.kind)] += 1
            else:
                decoded = result.decoded if isinstance(result, CaptionedClip) else result
                text = result.caption.caption if isinstance(result, CaptionedClip) else ""
                clips_f.write(json.dumps(_record(decoded, result)) + "\n")
                report.count(decoded, captioned=isinstance(result, CaptionedClip))
                if len(sheet) < _SHEET_ROWS:
                    sheet.append((_thumbnail(decoded), text))
            if on_result is not None:
                on_result(result)
    if sheet:
        clips = [clip for clip, _ in sheet]
        captions = [text for _, text in sheet] if caption is not None else None
        contact_sheet(clips, next(iter(clips[0].views)), report.files["contact_sheet.jpg"], captions)
    return report


def _record(decoded: DecodedClip, result: DecodedClip | CaptionedClip) -> dict[str, Any]:
    record = {
        **decoded.clip.model_dump(mode="json"),
        "views": {n: list(v.shape) for n, v in decoded.views.items()},
    }
    if isinstance(result, CaptionedClip):
        record["caption"] = result.caption.model_dump(mode="json")
    return record


def _thumbnail(clip: DecodedClip, n: int = 6) -> DecodedClip:
    """Keep only what the contact sheet needs: ``n`` frames of the first view."""
    name, frames = next(iter(clip.views.items()))
    return DecodedClip(clip=clip.clip, views={name: frames.subsample(n)})
