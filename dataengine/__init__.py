"""dataengine: records and stages that turn raw video into training data for video-generation models.

Stages live in ``dataengine.stages``; inputs in ``dataengine.inputs``; procedural test videos in
``dataengine.world.generate``. Importing this package is cheap: it loads no models and starts no processes.
"""

from dataengine.records import (
    Clip,
    DecodedClip,
    Failure,
    Frames,
    ProbeInfo,
    Source,
    Video,
    clip_id_for,
    normalize_uri,
    video_id_for,
)

__all__ = [
    "Clip",
    "DecodedClip",
    "Failure",
    "Frames",
    "ProbeInfo",
    "Source",
    "Video",
    "clip_id_for",
    "normalize_uri",
    "video_id_for",
]
