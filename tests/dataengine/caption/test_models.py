"""Where a caption model comes from: a bad name stops with a message, before any loader sees it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataengine.caption.models import SHIPPED, resolve_model
from dataengine.config import ConfigError


def test_a_missing_local_folder_is_named_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no model folder at .*config\.json"):
        resolve_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model folder"):
        resolve_model(str(tmp_path / "empty"))


def test_folders_and_hub_ids_pass_through_unchanged() -> None:
    folder = str(SHIPPED["world-captioner"])
    assert resolve_model(folder) == folder
    assert resolve_model("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert resolve_model("builtin:world-captioner") == folder


def test_an_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known: .*builtin:world-captioner"):
        resolve_model("builtin:nope")
