"""Shared fixtures: the test clips are made once per session with ffmpeg (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.media import GoodClip, make_broken_inputs, make_good_clips, make_scene_cut_clip


@pytest.fixture(scope="session")
def good_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GoodClip]:
    return make_good_clips(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="session")
def broken_inputs(
    tmp_path_factory: pytest.TempPathFactory, good_clips: dict[str, GoodClip]
) -> dict[str, Path]:
    return make_broken_inputs(tmp_path_factory.mktemp("broken"), good_clips["h264_audio"].path)


@pytest.fixture(scope="session")
def scene_cut_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of testsrc, a hard cut, then 4 s of SMPTE bars."""
    return make_scene_cut_clip(tmp_path_factory.mktemp("cut") / "cut.mp4")
