"""ffmpeg reads the named input and nothing it points to: the allowlists in ``media.INPUT_OPTIONS``, in every
call that opens an input (ffprobe, scene detection, decode)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dataengine.media import INPUT_OPTIONS, SAFE_DEMUXERS, MediaError, ffprobe
from dataengine.records import Clip, Failure, Source, Video
from dataengine.stages import DecodeStage, ProbeStage, SplitConfig
from dataengine.stages.split import detect_cuts
from tests.crafted import REFUSALS, ReferenceTrap, make_reference_trap
from tests.media import GoodClip, make_world_stills


def test_every_allowed_demuxer_is_one_this_ffmpeg_has() -> None:
    listing = subprocess.run(
        ["ffmpeg", "-hide_banner", "-demuxers"], capture_output=True, text=True, check=True
    )
    names = {n for line in listing.stdout.splitlines()[4:] for n in line.split()[1].split(",")}
    assert set(SAFE_DEMUXERS) <= names
    assert not {"hls", "dash", "concat", "image2", "imf", "sdp", "rtsp", "lavfi", "tty"} & set(SAFE_DEMUXERS)
    assert INPUT_OPTIONS["protocol_whitelist"] == "file"


@pytest.mark.parametrize(("name", "demuxer"), [("hls", "hls"), ("ffconcat", "concat"), ("pattern", "image2")])
def test_without_the_allowlists_ffprobe_follows_the_crafted_inputs(
    tmp_path: Path, name: str, demuxer: str
) -> None:
    """The crafted inputs are real attacks: plain ffprobe reads what they name (so the refusals below are
    not vacuous). The HTTP playlist is not here: ffmpeg's own default already keeps a local playlist off
    http, the allowlists keep it so."""
    with make_reference_trap(tmp_path / "in", tmp_path / "out") as trap:
        cmd = ["ffprobe", "-v", "error", "-show_entries", "format=format_name", "-of", "csv=p=0"]
        done = subprocess.run([*cmd, str(trap.inputs[name])], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == demuxer
        assert trap.tripwire.opened == (name != "pattern")


@pytest.mark.parametrize("name", ["hls", "hls_http", "ffconcat", "pattern"])
def test_ffprobe_refuses_inputs_that_point_elsewhere(reference_trap: ReferenceTrap, name: str) -> None:
    with pytest.raises(MediaError) as refused:
        ffprobe(str(reference_trap.inputs[name]), timeout_s=30)
    assert REFUSALS[name] in refused.value.reason
    assert reference_trap.untouched() and reference_trap.server.connections == 0


def test_a_protocol_in_the_name_is_refused(
    reference_trap: ReferenceTrap, good_clips: dict[str, GoodClip]
) -> None:
    clip = good_clips["h264_audio"].path
    for url, protocol in [
        (f"concat:{clip}|{clip}", "concat"),
        (f"subfile,,start,0,end,1000,,:{clip}", "subfile"),
        (f"{reference_trap.server.url}/secret.ts", "http"),
    ]:
        with pytest.raises(
            MediaError, match=f"through the '{protocol}' protocol; only the named file is read"
        ):
            ffprobe(url, timeout_s=30)
    assert reference_trap.server.connections == 0


def test_scene_detection_and_decode_refuse_a_file_swapped_for_a_playlist_after_probe(
    reference_trap: ReferenceTrap, good_clips: dict[str, GoodClip], tmp_path: Path
) -> None:
    path = tmp_path / "clip.mp4"
    shutil.copyfile(good_clips["h264_audio"].path, path)
    video = ProbeStage().probe(Source.from_uri(path))
    assert isinstance(video, Video)
    shutil.copyfile(reference_trap.inputs["hls"], path)
    with pytest.raises(MediaError, match=r"a playlist or reference file \(hls\)"):
        detect_cuts(str(path), SplitConfig())
    decoded = DecodeStage().decode(Clip.of(video, index=0, start_s=0.0, end_s=1.0))
    assert isinstance(decoded, Failure) and "a playlist or reference file (hls)" in decoded.reason
    assert reference_trap.untouched()


def test_a_picture_only_image2_recognises_is_read_as_that_one_file(tmp_path: Path) -> None:
    """JPEGs as PIL writes them are recognised by image2 alone: probed and decoded as one still, with
    pattern expansion off, while a pattern name next to numbered pictures stays refused."""
    stills = make_world_stills(tmp_path / "stills")
    assert ffprobe(str(stills["jpeg"]), timeout_s=30)["format"]["format_name"] == "image2"
    video = ProbeStage().probe(Source.from_uri(stills["jpeg"]))
    assert isinstance(video, Video) and video.probe.is_image and video.probe.container == "image2"
    clip = Clip.of(video, index=0, start_s=0.0, end_s=1.0)
    decoded = DecodeStage().decode(clip)
    assert not isinstance(decoded, Failure), decoded.reason
    assert decoded.views["caption"].frames_THWC.shape[0] == 1
    for i in range(1, 4):  # a literal "still%03d.jpg" beside still001.jpg..: refused, not read as 4 frames
        shutil.copy(stills["jpeg"], tmp_path / "stills" / f"still{i:03d}.jpg")
    pattern = shutil.copy(stills["jpeg"], tmp_path / "stills" / "still%03d.jpg")
    with pytest.raises(MediaError, match="image-sequence pattern name"):
        ffprobe(str(pattern), timeout_s=30)
