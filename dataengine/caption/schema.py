"""The structured caption: a bounded schema a VLM fills in under guided decoding, rendered to prose here.

Every string has a maximum length and every list a maximum size, so guided decoding always terminates and
an output that parses is never unbounded. Field order is the order a person would describe a clip in:
what it is, who and what is on screen, what happens when, where, in what light, through what camera, in what
style, and what text is visible. ``render_caption`` and ``render_short`` are deterministic: the same
structure always gives the same prose.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = "1"

Short = Annotated[str, StringConstraints(max_length=80)]
Text = Annotated[str, StringConstraints(max_length=240)]

ShotSize = Literal["extreme close-up", "close-up", "medium", "wide", "extreme wide", "unknown"]
Angle = Literal["eye level", "high", "low", "overhead", "dutch", "unknown"]
Movement = Literal[
    "static", "pan left", "pan right", "tilt up", "tilt down", "zoom in", "zoom out", "dolly in",
    "dolly out", "tracking", "handheld", "orbit", "crane", "unknown",
]  # fmt: skip


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Subject(_Part):
    kind: Short = Field(description="what it is: a person, an animal, an object, a shape")
    appearance: Text = Field(description="colour, size, shape, clothing, texture: how to draw it")
    position: Short = Field(description="where it is in the frame at the start")
    motion: Text = Field(description="how it moves over the clip, with direction and speed")


class Event(_Part):
    start_s: float = Field(ge=0, le=3600)
    end_s: float = Field(ge=0, le=3600)
    description: Text


class Camera(_Part):
    shot: ShotSize
    angle: Angle
    movement: Movement


class StructuredCaption(_Part):
    summary: Text = Field(description="one sentence: what the clip shows")
    subjects: list[Subject] = Field(max_length=6)
    events: list[Event] = Field(max_length=8)
    setting: Text = Field(description="where: place, background, surroundings")
    lighting: Short
    camera: Camera
    style: Short = Field(description="medium and style: live action, animation, screen recording, ...")
    on_screen_text: list[Short] = Field(max_length=6, description="text visible in the frame, verbatim")


def json_schema(duration_s: float | None = None) -> dict[str, Any]:
    """The JSON schema handed to guided decoding (bounded: maxLength, maxItems, numeric ranges).

    With ``duration_s``, event times are bounded by the span being captioned, so guided decoding cannot
    place an event after the clip ends.
    """
    schema = copy.deepcopy(_base_schema())
    if duration_s is not None:
        limit = math.ceil(duration_s * 10) / 10
        for name in ("start_s", "end_s"):
            schema["$defs"]["Event"]["properties"][name]["maximum"] = limit
    return schema


@functools.cache
def _base_schema() -> dict[str, Any]:
    return StructuredCaption.model_json_schema()  # ~4 ms: built once, copied per request


def render_caption(caption: StructuredCaption) -> str:
    """The dense prose caption: every field, in a fixed order, as plain sentences."""
    parts = [_sentence(caption.summary)]
    for subject in caption.subjects:
        details = ", ".join(p for p in (subject.appearance, subject.position) if p.strip())
        text = f"{subject.kind}: {details}" if details else subject.kind
        parts.append(_sentence(f"{text}; {subject.motion}" if subject.motion.strip() else text))
    for event in caption.events:
        parts.append(_sentence(f"From {event.start_s:.1f} s to {event.end_s:.1f} s, {event.description}"))
    if caption.setting.strip():
        parts.append(_sentence(f"Setting: {caption.setting}"))
    if caption.lighting.strip():
        parts.append(_sentence(f"Lighting: {caption.lighting}"))
    parts.append(_sentence(_camera_phrase(caption.camera)))
    if caption.style.strip():
        parts.append(_sentence(f"Style: {caption.style}"))
    if caption.on_screen_text:
        quoted = ", ".join(f'"{t}"' for t in caption.on_screen_text)
        parts.append(_sentence(f"On-screen text: {quoted}"))
    return " ".join(p for p in parts if p)


def render_short(caption: StructuredCaption, max_words: int = 30) -> str:
    """A one-sentence caption: the summary, or the first subject and the setting, cut to ``max_words``."""
    text = caption.summary.strip()
    if not text and caption.subjects:
        text = f"{caption.subjects[0].kind} {caption.setting}".strip()
    words = text.split()
    return _sentence(" ".join(words[:max_words]))


def _camera_phrase(camera: Camera) -> str:
    shot = "" if camera.shot == "unknown" else f"{camera.shot} shot"
    angle = "" if camera.angle == "unknown" else f"at {camera.angle} angle"
    movement = {"unknown": "", "static": "static camera"}.get(camera.movement, f"camera {camera.movement}")
    words = " ".join(w for w in (shot, angle) if w)
    phrase = ", ".join(w for w in (words, movement) if w)
    return f"Camera: {phrase}" if phrase else ""


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?\"'" else f"{text}."
