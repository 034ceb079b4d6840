"""dataengine: the library. Records and stages that turn raw video into training data for video generation.

``records``  the typed records (video, clip, caption, sample) that flow between stages
``inputs``   files, folders, globs, lists and URIs, confined and normalised into sources
``stages``   probe, split, decode, caption (``caption/``: engines, prompts, schema, quality gate), encode
             (``encode/``: VAEs, text encoders), sample; each one class with setup/process_batch/teardown
``shards``   WebDataset tars and the parquet manifest
``world``    the synthetic world: videos with known pixels, their caption language, fidelity scoring
``config``   the one base config, recipe registries and ``--set`` overrides
``media``    ffmpeg/ffprobe helpers and the demuxer allowlist

It imports nothing from ``pipelines``, ``trainer``, ``services`` or the CLI (``make lint`` checks this).
Importing this package is cheap: it loads no models and starts no processes.
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
