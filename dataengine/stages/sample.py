"""Sample: captioned clips -> encoded latents + caption text embedding -> one WebDataset sample each.

CaptionedClip --> Sample | Failure(stage="encode"). Composes the encode stage, the text embedder and
``samples.to_sample``, so that a worker holding the VAE (and the text encoder) turns a batch of captioned
clips into what the shard writer stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from dataengine.config import Config
from dataengine.encode.text import TextEmbedConfig, TextEmbedder
from dataengine.records import CaptionedClip, Clip, EncodedClip, Failure
from dataengine.samples import to_sample
from dataengine.stages.base import Stage
from dataengine.stages.encode import EncodeConfig, EncodeStage


@dataclass(frozen=True)
class Sample:
    """What the shard writer stores for one clip: ``members`` go into the tar, ``row`` into the manifest."""

    key: str
    members: dict[str, Any]
    row: dict[str, Any]
    clip: Clip


class SampleConfig(Config):
    encode: EncodeConfig
    text: TextEmbedConfig | None = Field(None, description="caption text embeddings; None: none stored")
    preview_view: str = Field("caption", description="the view whose middle frame becomes the jpg preview")


class SampleStage(Stage[CaptionedClip, Sample]):
    name = "encode"
    input_type = CaptionedClip
    output_type = Sample
    config: SampleConfig

    def __init__(self, config: SampleConfig) -> None:
        super().__init__(config)
        self.encoder = EncodeStage(config.encode)
        self.text = TextEmbedder(config.text) if config.text is not None else None

    def setup(self) -> None:
        self.encoder.setup()
        if self.text is not None:
            self.text.setup()

    def teardown(self) -> None:
        self.encoder.teardown()
        if self.text is not None:
            self.text.teardown()

    def process_batch(self, batch: Sequence[CaptionedClip]) -> list[Sample | Failure]:
        encoded = self.encoder.process_batch(batch)
        ok = [e for e in encoded if isinstance(e, EncodedClip)]
        texts = self.text.embed([e.captioned.caption.caption for e in ok]) if self.text and ok else []
        embedding = dict(zip((e.clip_id for e in ok), texts, strict=True))
        out: list[Sample | Failure] = []
        for item in encoded:
            if isinstance(item, Failure):
                out.append(item)
                continue
            key, members, row = to_sample(
                item, embedding.get(item.clip_id), self.config.encode.view, self.config.preview_view
            )
            if self.config.text is not None:  # a sampler embeds prompts with the same encoder
                members["json"]["text_encoder"] = self.config.text.model_dump(mode="json")
                members["json"]["models"]["text"] = self.config.text.model
            out.append(Sample(key, members, row, item.clip))
        return out
