"""The synthetic world: procedural videos whose every pixel is known, the language a perfect captioner writes
for them, and the score of any caption against that truth.

``spec``      what a video is (shots, backgrounds, objects on straight paths) and the palette
``render``    the frames and object masks of a spec
``generate``  random valid specs, encoded to mp4 with their ground truth beside them (``dataengine synth``)
``language``  the caption a perfect captioner writes for a shot, and the reader of any caption's text
``fidelity``  fact recall/precision of a caption against the truth, and the clip redrawn from the caption
``footage``   real footage from a PyPI wheel: what the world's models have never seen
"""

from dataengine.world.generate import random_spec, synthesize, write_video
from dataengine.world.language import WORLD_VERSION, read_caption, reference_caption, shot_caption
from dataengine.world.spec import PALETTE, ObjectSpec, ShotSpec, VideoSpec

__all__ = [
    "PALETTE",
    "WORLD_VERSION",
    "ObjectSpec",
    "ShotSpec",
    "VideoSpec",
    "random_spec",
    "read_caption",
    "reference_caption",
    "shot_caption",
    "synthesize",
    "write_video",
]
