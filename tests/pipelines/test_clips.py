from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from dataengine.stages import ProbeConfig, SplitConfig
from pipelines.clips import extract_clips
from tests.media import GoodClip


def test_extract_clips_writes_clips_failures_and_a_contact_sheet(
    good_clips: dict[str, GoodClip], broken_inputs: dict[str, Path], images: dict[str, Path], tmp_path: Path
) -> None:
    broken = [str(p) for name, p in broken_inputs.items() if name != "text_file"]  # .txt is a list file
    good_dir = str(good_clips["h264_audio"].path.parent)
    image_dir = str(images["png"].parent)  # walked for image extensions too
    split = SplitConfig(mode="fixed", window_s=1, min_clip_s=0.5, max_clip_s=1)
    report = extract_clips([good_dir, image_dir, *broken], tmp_path / "out", split=split)

    clips = [json.loads(line) for line in report.files["clips.jsonl"].read_text().splitlines()]
    failures = [json.loads(line) for line in report.files["failures.jsonl"].read_text().splitlines()]
    video_clips = [c for c in clips if not c["probe"]["is_image"]]
    image_clips = [c for c in clips if c["probe"]["is_image"]]
    assert len(video_clips) == sum(round(c.duration_s) for c in good_clips.values())
    assert sorted(c["uri"].rsplit("/", 1)[-1] for c in image_clips) == sorted(p.name for p in images.values())
    assert report.clips == len(clips) and len(report.videos) == len(good_clips) + len(images)
    assert {f["uri"].rsplit("/", 1)[-1] for f in failures} == {Path(p).name for p in broken}
    assert all(f["stage"] == "probe" and f["reason"] for f in failures if "a_directory" not in f["uri"])
    (empty_dir,) = [f for f in failures if "a_directory" in f["uri"]]
    assert empty_dir["stage"] == "input" and "matched no files" in empty_dir["reason"]
    assert all(c["views"]["caption"][0] == 2 for c in video_clips)
    assert all(c["views"]["caption"][0] == 1 and (c["start_s"], c["end_s"]) == (0, 1) for c in image_clips)
    assert Image.open(report.files["contact_sheet.jpg"]).size[1] > 0


def test_images_false_records_stills_as_probe_failures(images: dict[str, Path], tmp_path: Path) -> None:
    report = extract_clips([str(images["png"])], tmp_path / "out", probe=ProbeConfig(images=False))
    (failure,) = [json.loads(line) for line in report.files["failures.jsonl"].read_text().splitlines()]
    assert report.clips == 0 and failure["stage"] == "probe"
    assert failure["reason"] == "still image (png), not a video"
