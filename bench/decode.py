"""Decode stage vs ffmpeg's speed of light, measured side by side in one run on the same clips.

    .venv/bin/python bench/decode.py                  # two 10 s testsrc2 videos (320x240, 1280x720)
    .venv/bin/python bench/decode.py --quick          # 4 s videos, at most 2 clips each, < 20 s
    .venv/bin/python bench/decode.py --inputs a.mp4 some/dir --repeat 5 --json

Each input is probed and split into fixed windows once (untimed). For each view case, three things decode
the same clips, in alternating order, best of ``--repeat``:

* ours: ``DecodeStage.process_batch(clips)``, frames delivered as numpy arrays;
* sol (graph): the very same ffmpeg passes with null outputs (``DecodeStage.null_command``),
  so only the piping into Python differs;
* sol (file): ``ffmpeg -i X -vf <the views' fps/crop/scale> -f null -`` over the whole file, no clips and
  no seeks: what the hardware does when nobody cuts clips.

Null outputs keep ``pix_fmt=rgb24``, so ffmpeg still converts to RGB. Throughput is source frames per second
(clip duration x source avg fps / wall s); ratio = ours / sol, goal >= 0.8. Default inputs are testsrc2
h264 at 25 fps with a keyframe every 2 s (typical of web video). "Full decode" is, for context only,
``ffmpeg -i X -f null -`` of the whole source with no filters.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ffmpeg
from common import base_parser, ratio_cell
from rich.console import Console
from rich.table import Table

from dataengine.records import Clip, DecodedClip, Failure, Source, Video
from dataengine.stages.decode import DecodeConfig, DecodeStage, ViewConfig, passes, plan_view
from dataengine.stages.probe import ProbeStage
from dataengine.stages.split import SplitConfig, SplitStage

_VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts"}
_CAPTION = ViewConfig(fps=2, max_frames=16, resize="short_side", size=448)
_LATENTS = ViewConfig(fps=16, max_frames=None, resize="crop", width=256, height=256)
Row = dict[str, object]  # one case on one input: counts, best walls, rates, ratio, every wall time
CASES = {
    "caption": DecodeConfig(views={"caption": _CAPTION}),
    "caption+latents": DecodeConfig(views={"caption": _CAPTION, "latents": _LATENTS}),
}


def _make_inputs(work: Path, seconds: int) -> list[Path]:
    """Two h264 testsrc2 videos at 25 fps made with ffmpeg (reused when already in ``work``)."""
    paths = []
    for w, h in ((320, 240), (1280, 720)):
        path = work / f"testsrc2_{w}x{h}_{seconds}s.mp4"
        if not path.exists():
            lavfi = f"testsrc2=size={w}x{h}:rate=25:duration={seconds}"
            encode = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "50"]
            cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", lavfi, *encode]
            subprocess.run([*cmd, str(path)], check=True, capture_output=True)
        paths.append(path)
    return paths


def _expand(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in _VIDEO_SUFFIXES))
        else:
            paths.append(item)
    return paths


def _split(path: Path, window_s: float, max_clips: int | None) -> tuple[Video, list[Clip]]:
    video = ProbeStage().probe(Source.from_uri(path))
    if isinstance(video, Failure):
        sys.exit(f"bench: cannot probe {path}: {video.reason}")
    config = SplitConfig(mode="fixed", window_s=window_s, min_clip_s=min(1.0, window_s), max_clip_s=window_s)
    clips: list[Clip] = []
    for item in SplitStage(config).split(video):
        if isinstance(item, Failure) and item.kind != "dropped":
            sys.exit(f"bench: cannot split {path}: {item.reason}")
        if isinstance(item, Clip):
            clips.append(item)
    if not clips:
        sys.exit(f"bench: {path} gave no clips of at least {config.min_clip_s:g} s")
    return video, clips[:max_clips]


def _verify(config: DecodeConfig, clips: list[Clip], results: list[DecodedClip | Failure]) -> int:
    """Abort unless every clip decoded with the expected frame count; return the frames delivered."""
    delivered = 0
    for clip, result in zip(clips, results, strict=True):
        where = f"{Path(clip.path).name} [{clip.start_s:g}, {clip.end_s:g}) s"
        if isinstance(result, Failure):
            sys.exit(f"bench: decode failed on {where}: {result.reason}")
        for name, view in config.views.items():
            got, want = len(result.views[name].frames_THWC), plan_view(view, clip).expected
            if got != want:
                sys.exit(f"bench: view {name!r} of {where}: {got} frames, expected {want}")
            delivered += got
    return delivered


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _ours(stage: DecodeStage, clips: list[Clip]) -> tuple[float, list[DecodedClip | Failure]]:
    start = time.perf_counter()
    results = stage.process_batch(clips)
    return time.perf_counter() - start, results


def _sol_graph(stage: DecodeStage, clips: list[Clip]) -> None:
    """The very same ffmpeg passes as ours, writing to null outputs instead of pipes into Python."""
    for run in passes(clips, stage.config.max_clips_per_pass):
        subprocess.run(stage.null_command(run), check=True, capture_output=True)


def _file_command(config: DecodeConfig, clip: Clip) -> list[str]:
    """``ffmpeg -i X -vf <the views' filters> -f null -`` over the whole file: no clips, no seeks."""
    source = ffmpeg.input(clip.path).video
    branches = source.split() if len(config.views) > 1 else None
    outputs = []
    for b, view in enumerate(config.views.values()):
        plan = plan_view(view, clip)
        stream = (branches[b] if branches is not None else source).filter("fps", fps=plan.fps, round="up")
        if plan.crop is not None:
            stream = stream.filter("crop", *plan.crop)
        stream = stream.filter("scale", plan.width, plan.height, flags="bicubic")
        outputs.append(stream.output("-", format="null", pix_fmt="rgb24"))
    cmd: list[str] = (
        ffmpeg.merge_outputs(*outputs).global_args("-hide_banner", "-loglevel", "error").compile()
    )
    return cmd


def _full_decode_fps(video: Video, repeat: int) -> float:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", video.path, "-f", "null", "-"]
    wall = min(_timed(lambda: subprocess.run(cmd, check=True, capture_output=True)) for _ in range(repeat))
    return video.probe.n_frames / wall


def _bench_case(case: str, clips: list[Clip], repeat: int) -> Row:
    """Best-of-``repeat`` wall times of ours and sol on ``clips``, alternating which goes first."""
    config = CASES[case]
    stage = DecodeStage(config)
    delivered = _verify(config, clips[:1], stage.process_batch(clips[:1]))  # warm-up, one clip each side
    _sol_graph(stage, clips[:1])
    file_cmd = _file_command(config, clips[0])
    ours: list[float] = []
    sol: list[float] = []
    sol_file: list[float] = []
    for r in range(repeat):
        for side in ("ours", "sol", "file") if r % 2 == 0 else ("file", "sol", "ours"):
            if side == "ours":
                wall, results = _ours(stage, clips)
                ours.append(wall)
                delivered = _verify(config, clips, results)
            elif side == "sol":
                sol.append(_timed(lambda: _sol_graph(stage, clips)))
            else:
                sol_file.append(_timed(lambda: subprocess.run(file_cmd, check=True, capture_output=True)))
    src_frames = sum(c.duration_s * c.probe.avg_fps for c in clips)
    file_frames = clips[0].probe.duration_s * clips[0].probe.avg_fps
    best_ours, best_sol, best_file = min(ours), min(sol), min(sol_file)
    return {
        "case": case,
        "clips": len(clips),
        "source_frames": src_frames,
        "output_frames": delivered,
        "ours_wall_s": best_ours,
        "sol_wall_s": best_sol,
        "ours_src_fps": src_frames / best_ours,
        "sol_src_fps": src_frames / best_sol,
        "ours_out_fps": delivered / best_ours,
        "ours_clips_per_s": len(clips) / best_ours,
        "sol_clips_per_s": len(clips) / best_sol,
        "ratio": best_sol / best_ours,
        "file_src_fps": file_frames / best_file,
        "ratio_file": (src_frames / best_ours) / (file_frames / best_file),
        "spread": max(statistics.median(ours) / best_ours, statistics.median(sol) / best_sol) - 1,
        "ours_walls_s": ours,
        "sol_walls_s": sol,
        "file_walls_s": sol_file,
    }


def _table(label: str, full_fps: float, rows: list[Row], repeat: int) -> Table:
    title = f"{label}: full-file decode {full_fps:,.0f} fps (context)"
    caption = (
        f"best of {repeat}. ours, sol (same ffmpeg graph, null output), file (whole-file ffmpeg -vf ... "
        "-f null): source frames/s; out: frames delivered/s by ours; "
        "spread: worst side's median/best - 1 (noise). Goal: ratios >= 0.8"
    )
    table = Table(title=title, caption=caption)
    for col in ("case", "clips", "ours", "sol", "ours/sol", "file", "ours/file", "out", "clip/s", "spread"):
        table.add_column(col, justify="left" if col == "case" else "right", no_wrap=col == "case")
    for row in rows:
        table.add_row(
            str(row["case"]),
            str(row["clips"]),
            f"{row['ours_src_fps']:,.0f}",
            f"{row['sol_src_fps']:,.0f}",
            ratio_cell(row["ratio"], 0.8),
            f"{row['file_src_fps']:,.0f}",
            ratio_cell(row["ratio_file"], 0.8),
            f"{row['ours_out_fps']:,.0f}",
            f"{row['ours_clips_per_s']:.1f}",
            f"{row['spread']:.0%}",
        )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--inputs", nargs="+", help="video files or directories (default: make two)")
    parser.add_argument("--work", type=Path, help="where default inputs are made (default: a temp dir)")
    parser.add_argument("--window-s", type=float, default=2.0, help="clip length in seconds")
    parser.add_argument("--quick", action="store_true", help="4 s default inputs, at most 2 clips each")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.window_s <= 0:
        parser.error("--repeat must be >= 1 and --window-s > 0")
    console = Console(width=120)
    inputs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        paths = _expand(args.inputs) if args.inputs else _make_inputs(work, 4 if args.quick else 10)
        for path in paths:
            video, clips = _split(path, args.window_s, 2 if args.quick else None)
            p = video.probe
            label = f"{path.name} ({p.width}x{p.height} {p.codec} {p.avg_fps:g} fps)"
            full_fps = _full_decode_fps(video, args.repeat)
            rows = [_bench_case(case, clips, args.repeat) for case in CASES]
            console.print(_table(label, full_fps, rows, args.repeat))
            size = {"width": p.width, "height": p.height}
            inputs.append({"input": str(path), **size, "full_decode_fps": full_fps, "cases": rows})
    if args.json:
        print(json.dumps({"repeat": args.repeat, "window_s": args.window_s, "inputs": inputs}))


if __name__ == "__main__":
    main()
