"""How the command line shows results: Rich tables and histograms on the terminal. Commands compute; this
module only draws, so every table a command prints can be read (and changed) in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dataengine.records import Failure, Video
from pipelines.clips import ClipsReport

console = Console(stderr=True)  # progress, summaries and errors; results (JSON) go to stdout
stdout = Console()  # the tables a command prints as its result


def print_probe(results: list[Video | Failure]) -> None:
    table = Table("source", "size", "fps", "duration", "codec", "status")
    for result in results:
        if isinstance(result, Video):
            p = result.probe
            table.add_row(
                result.uri,
                f"{p.width}x{p.height}",
                f"{p.avg_fps:.2f}{' vfr' if p.is_vfr else ''}",
                f"{p.duration_s:.2f} s",
                f"{p.codec} {p.pix_fmt}",
                "[green]ok[/]",
            )
        else:
            table.add_row(result.uri, "", "", "", "", f"[red]{result.reason}[/]")
    stdout.print(table)


def print_regate(found: Any, keep_list: Path | None) -> None:
    stdout.print(f"[bold]today's gate[/] on {found.checked} ok samples: keeps {len(found.keep)}, "
              f"would refuse {len(found.refused)}")  # fmt: skip
    if found.refused:
        table = Table("check", "samples", title="what the gate would refuse")
        for check, n in found.reasons():
            table.add_row(check, str(n))
        stdout.print(table)
    if keep_list is not None:
        stdout.print(f"keep-list: [bold]{keep_list}[/] ({len(found.keep)} clip ids)")


def print_inspection(found: Any) -> None:
    status = ", ".join(f"{n} {s}" for s, n in sorted(found.by_status.items()))
    size = f"{found.shards} shards, {found.shard_bytes / 1e6:.1f} MB"
    stdout.print(f"[bold]{found.out_dir}[/]: {status}; {size}")
    if found.reasons:
        table = Table("stage", "reason", "clips/videos", title="why clips did not make it")
        for stage, reason, n in found.reasons[:20]:
            table.add_row(stage, reason, str(n))
        stdout.print(table)
    for title, dist in (
        ("caption length (words)", found.caption_words),
        ("clip duration (s)", found.clip_seconds),
        ("caption mean token log-prob", found.caption_mean_logprob),
        ("caption zlib compression ratio", found.caption_compression),
    ):
        if dist is None:
            continue
        table = Table("range", "clips", "", title=f"{title}: p10 {dist.p10:.3g}, median {dist.p50:.3g}, "
                      f"p90 {dist.p90:.3g} (min {dist.min:.3g}, max {dist.max:.3g})")  # fmt: skip
        top = max(c for _, _, c in dist.histogram) or 1
        for lo, hi, count in dist.histogram:
            table.add_row(f"{lo:7.3g} - {hi:7.3g}", str(count), "█" * round(30 * count / top))
        stdout.print(table)
    if found.suspicious:
        stdout.print(f"[bold yellow]{len(found.suspicious)} ok captions today's gate would refuse[/] "
                  "(dataengine inspect RUN --regate --keep-list keep.txt to drop them):")  # fmt: skip
        for clip_id, reason in found.suspicious[:5]:
            stdout.print(f"  {clip_id}: {reason}")
    if found.curation is not None:
        print_curation(found.curation)
    if found.sheet is not None:
        stdout.print(f"contact sheet: [bold]{found.sheet}[/]")


def print_curation(found: Any) -> None:
    """Kept and dropped per check, each score's spread with its bounds, and where the pictures are."""
    stdout.print(
        f"[bold]curation[/]: {found.reached} clips reached the filters, {found.kept} went on to captioning"
    )
    table = Table("score", "unit", "p10", "median", "p90", "bounds", "dropped", title="curation scores")
    for score in found.scores:
        spread = score.percentiles()
        cells = [f"{v:.3g}" for v in spread] if spread else ["", "", ""]
        bounds = score.bounds or {}
        limits = " ".join(f"{k} {v:g}" for k, v in bounds.items() if v is not None) or "score only"
        table.add_row(score.name, score.unit, *cells, limits, str(score.dropped_by))
    stdout.print(table)
    if found.drops:
        drops = Table("stage", "check", "clips", title="dropped before captioning")
        for stage, check, n in found.drops:
            drops.add_row(stage, check, str(n))
        stdout.print(drops)
    for what, path in (("score histograms", found.histograms), ("dropped clips", found.dropped_sheet)):
        if path is not None:
            stdout.print(f"{what}: [bold]{path}[/]")


def print_clips_report(report: ClipsReport) -> None:
    table = Table("what", "count", title="summary")
    table.add_row("videos with clips", str(len(report.videos)))
    table.add_row("clips decoded", str(report.clips))
    if report.captioned:
        table.add_row("clips captioned", str(report.captioned))
    for view, frames in report.frames.items():
        table.add_row(f"frames ({view} view)", str(frames))
    for (stage, kind), count in sorted(report.failures.items()):
        table.add_row(f"{'dropped' if kind == 'dropped' else 'failed'} at {stage}", str(count))
    console.print(table)
    for name, path in report.files.items():
        if path.exists():
            console.print(f"{name:18} {path}")
    if report.failures:
        console.print(f"reasons: [bold]jq -r .reason {report.files['failures.jsonl']} | sort | uniq -c[/]")


def print_fidelity(scores: dict[str, Any]) -> None:
    table = Table("attribute", "recall", title=f"caption fidelity: {scores['model']} ({scores['engine']})")
    for name, value in scores["per_attribute"].items():
        table.add_row(name, f"{value:.3f}")
    for axis, value in scores["position_axes"].items():  # which way a wrong start region is wrong
        table.add_row(f"  position {axis}", f"{value:.3f}", style="dim")
    stdout.print(table)
    recall, precision = scores["fact_recall"], scores["fact_precision"]
    psnr, iou = scores["recon_psnr"], scores["recon_iou"]
    stdout.print(
        f"fact recall [bold]{recall:.3f}[/], precision [bold]{precision:.3f}[/]; blind reconstruction "
        f"PSNR [bold]{psnr:.1f} dB[/], IoU [bold]{iou:.3f}[/]; "
        f"{scores['captioned']}/{scores['clips']} clips captioned in {scores['seconds']:.0f} s"
    )
    stdout.print(f"report: [bold]{scores['report']}[/]")


def print_probe_student(result: dict[str, Any]) -> None:
    counts = sorted({k for v in result["attributes"].values() for k in v if k != "all"})
    title = f"teacher-forced first-token accuracy: {result['model']} ({result['clips']} clips)"
    table = Table("attribute", *(f"{k} object{'s' * (k != '1')}" for k in counts), "all", title=title)
    for name, scores in result["attributes"].items():
        table.add_row(name, *(f"{scores[k]:.2f}" if k in scores else "" for k in [*counts, "all"]))
    stdout.print(table)
    for where, scores in result["positions"].items():
        stdout.print(
            f"visual tokens at the tower's {where}: grid row {scores['row']:.2f} "
            f"(chance {scores['row_chance']:.2f}), column {scores['col']:.2f} "
            f"(chance {scores['col_chance']:.2f})"
        )
    table = Table(
        "reading", "accuracy", "majority", "tokens", title="what the visual tokens show (linear probe)"
    )
    for reading, probe in result["contents"].items():
        table.add_row(reading, f"{probe['accuracy']:.2f}", f"{probe['majority']:.2f}", str(probe["tokens"]))
    stdout.print(table)
