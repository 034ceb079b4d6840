"""Every prompt the caption stage sends, in one place. Each has an id recorded with every caption it made.

Change a prompt's text only together with its id (``dense-v1`` -> ``dense-v2``): captions in existing shards
say which prompt made them, and a comparison between runs is only meaningful when the ids differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PromptKind = Literal["video", "image", "text"]


@dataclass(frozen=True)
class Prompt:
    """A system message and a user message template; ``video`` and ``image`` prompts come with the frames."""

    id: str
    kind: PromptKind
    system: str
    user: str

    def render(self, **fields: object) -> str:
        """The user message with ``{placeholders}`` filled in."""
        return self.user.format(**fields)


_SYSTEM = (
    "You write reconstruction-grade captions for video clips: text detailed enough that an artist who never "
    "saw the clip could redraw it. Describe only what is visible. Answer with JSON that matches the schema."
)

DENSE = Prompt(
    id="dense-v1",
    kind="video",
    system=_SYSTEM,
    user=(
        "The video is {duration_s:.1f} seconds long ({n_frames} frames at {fps:.2f} fps). Fill in every "
        "field. summary: one sentence. subjects: each distinct person, animal or object with its look "
        "(colours, size, shape, clothing, texture), where it starts in the frame, and how it moves "
        "(direction, speed). events: what happens, in order, with approximate start and end times in "
        "seconds. setting, lighting, camera (shot size, angle, movement), style (live action, animation, "
        "rendering, screen capture), and any on-screen text copied exactly."
    ),
)

# A still image is a one-frame clip of a nominal 1 s: the caption keeps the video schema (events included).
DENSE_IMAGE = Prompt(
    id="dense-image-v1",
    kind="image",
    system=_SYSTEM,
    user=(
        "The image is a single still picture; treat it as a {duration_s:.1f}-second shot in which time "
        "stands still. Fill in every field. summary: one sentence. subjects: each distinct person, animal or "
        "object with its look (colours, size, shape, clothing, texture), where it is in the frame, and any "
        "motion the picture shows or implies. events: what is happening, as events from 0 to "
        "{duration_s:.1f} seconds. setting, lighting, camera (shot size, angle; movement: static), style "
        "(photograph, painting, illustration, rendering, screen capture), and any text copied exactly."
    ),
)

FUSE = Prompt(
    id="fuse-v1",
    kind="text",
    system=_SYSTEM,
    user=(
        "These are structured captions of consecutive windows of one {duration_s:.1f}-second clip, in "
        "order, with times relative to the clip start:\n{windows}\nMerge them into one caption of the whole "
        "clip: keep every subject once with its full look, order the events in time, and describe the "
        "camera over the whole clip."
    ),
)

ENHANCE = Prompt(
    id="enhance-v1",
    kind="text",
    system=_SYSTEM,
    user=(
        "Here is a short caption of a video clip:\n{caption}\nRewrite it as a structured caption, making "
        "explicit what it implies about the subjects, their look and motion, the setting, lighting, camera "
        "and style. Do not invent text or objects that it does not imply."
    ),
)

PROMPTS: dict[str, Prompt] = {p.id: p for p in (DENSE, DENSE_IMAGE, FUSE, ENHANCE)}


def get_prompt(prompt_id: str) -> Prompt:
    """The prompt with this id; ``KeyError`` names the ids that exist."""
    try:
        return PROMPTS[prompt_id]
    except KeyError:
        raise KeyError(f"unknown prompt id {prompt_id!r}; known: {sorted(PROMPTS)}") from None
