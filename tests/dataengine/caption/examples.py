"""Hand-written structured captions used by several tests."""

from __future__ import annotations

from dataengine.caption.schema import StructuredCaption

GOOD = StructuredCaption.model_validate(
    {
        "summary": "a red circle rolls right across a blue checkered floor",
        "subjects": [
            {
                "kind": "red circle",
                "appearance": "flat bright red disc about 40 px wide",
                "position": "left third, vertically centred",
                "motion": "moves right at about 30 px/s",
            }
        ],
        "events": [{"start_s": 0.0, "end_s": 2.0, "description": "the circle crosses to the centre"}],
        "setting": "a blue and light-blue checkerboard background",
        "lighting": "flat, even, no shadows",
        "camera": {"shot": "wide", "angle": "eye level", "movement": "pan left"},
        "style": "flat 2D computer graphics",
        "on_screen_text": ["SCENE 1"],
    }
)
