from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from dataengine.records import Frames, Source, clip_id_for, normalize_uri, video_id_for


def test_local_paths_normalise_to_absolute_file_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    expected = f"file://{tmp_path}/b/c.mp4"
    for spelling in (
        "b/c.mp4",
        "./b/c.mp4",
        "b/x/../c.mp4",
        f"{tmp_path}/b//c.mp4",
        f"file://{tmp_path}/b/c.mp4",
    ):
        assert normalize_uri(spelling) == expected, spelling


def test_question_marks_and_hashes_in_file_names_are_part_of_the_name() -> None:
    assert normalize_uri("/v/a?x.mp4") == "file:///v/a?x.mp4"
    assert video_id_for("/v/a?x.mp4") != video_id_for("/v/a?y.mp4")
    assert Source.from_uri("/v/clip#2.mp4").local_path == Path("/v/clip#2.mp4")


def test_remote_uris_lose_case_and_default_ports_but_keep_paths() -> None:
    assert normalize_uri("HTTPS://Example.COM:443/Videos/A.mp4?x=1") == "https://example.com/Videos/A.mp4?x=1"
    assert normalize_uri("http://example.com:8080/a.mp4") == "http://example.com:8080/a.mp4"
    assert normalize_uri("s3://Bucket/Key.mp4") == "s3://bucket/Key.mp4"


def test_ids_are_deterministic_and_distinct() -> None:
    vid = video_id_for("s3://bucket/a.mp4")
    assert vid == video_id_for("S3://BUCKET/a.mp4") != video_id_for("s3://bucket/b.mp4")
    assert len(vid) == 32 and int(vid, 16) >= 0
    clip = clip_id_for(vid, 1.0, 3.5)
    assert clip == clip_id_for(vid, 1.0004, 3.5) != clip_id_for(vid, 1.0, 3.6)
    assert "." not in clip and len(clip) == 32


def test_source_knows_local_from_remote(tmp_path: Path) -> None:
    local = Source.from_uri(tmp_path / "a.mp4")
    assert local.is_local and local.local_path == tmp_path / "a.mp4"
    remote = Source.from_uri("https://example.com/a.mp4")
    assert not remote.is_local
    with pytest.raises(ValueError, match="not a local file"):
        _ = remote.local_path


def test_records_are_strict() -> None:
    with pytest.raises(ValidationError):
        Source(uri="file:///a.mp4", video_id="x", extra_field=1)  # type: ignore[call-arg]


def test_frames_validate_their_layout() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Frames(np.zeros((2, 4, 4, 3), np.float32), 2.0, np.zeros(2))
    with pytest.raises(ValueError, match="one timestamp per frame"):
        Frames(np.zeros((2, 4, 4, 3), np.uint8), 2.0, np.zeros(3))
    frames = Frames(np.arange(10, dtype=np.uint8).repeat(48).reshape(10, 4, 4, 3), 2.0, np.arange(10) / 2)
    few = frames.subsample(4)
    assert few.shape == (4, 4, 4, 3) and list(few.frames_THWC[:, 0, 0, 0]) == [0, 3, 6, 9]
