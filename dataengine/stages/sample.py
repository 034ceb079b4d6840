"""Sample: captioned clips -> encoded latents + caption text embedding -> one WebDataset sample each.

CaptionedClip --> Sample | Failure(stage="encode"). Composes the encode stage, the text embedder and
``samples.to_sample``, so that a worker holding the VAE (and the text encoder) turns a batch of captioned
clips into what the shard writer stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import Field

from dataengine.config import Config
from dataengine.curate.learned import CaptionMatchConfig, CaptionMatcher
from dataengine.encode.text import TextEmbedConfig, TextEmbedder
from dataengine.records import CaptionedClip, Clip, Curation, EncodedClip, Failure
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
    caption_match: CaptionMatchConfig | None = Field(None, description="score each caption against its clip")
    match_view: str = Field("caption", description="the view the caption is matched against")


class SampleStage(Stage[CaptionedClip, Sample]):
    name = "encode"
    input_type = CaptionedClip
    output_type = Sample
    config: SampleConfig

    def __init__(self, config: SampleConfig) -> None:
        super().__init__(config)
        self.encoder = EncodeStage(config.encode)
        self.text = TextEmbedder(config.text) if config.text is not None else None
        match = config.caption_match
        self.matcher = CaptionMatcher(match, "filters.caption_match.model") if match is not None else None

    def setup(self) -> None:
        self.encoder.setup()
        if self.matcher is not None:
            self.matcher.setup()
        if self.text is not None:
            self.text.setup()

    def teardown(self) -> None:
        self.encoder.teardown()
        if self.matcher is not None:
            self.matcher.teardown()
        if self.text is not None:
            self.text.teardown()

    def process_batch(self, batch: Sequence[CaptionedClip]) -> list[Sample | Failure]:
        matched = self._matched(batch)
        done = iter(self.encoder.process_batch([m for m in matched if isinstance(m, CaptionedClip)]))
        encoded = [m if isinstance(m, Failure) else next(done) for m in matched]  # in input order
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

    def _matched(self, batch: Sequence[CaptionedClip]) -> list[CaptionedClip | Failure]:
        """With ``caption_match``: each clip with its score in its curation, or its ``dropped`` row when it
        scores below ``min_score`` (its caption was paid for, but it is not one to train on)."""
        if self.matcher is None or not batch:
            return list(batch)
        config = self.matcher.config
        clips = [c.decoded.views[self.config.match_view].frames_THWC for c in batch]
        texts = [c.caption.short_caption or c.caption.caption for c in batch]
        out: list[CaptionedClip | Failure] = []
        for item, score in zip(batch, self.matcher.score(clips, texts), strict=True):
            curation = item.decoded.curation or Curation({})
            scores = {**curation.scores, "caption_match": float(score)}
            if config.min_score is not None and score < config.min_score:
                reason = f"caption_match {score:.4g} < {config.min_score:g} (filters.caption_match.min_score)"
                out.append(Failure.of(item.clip, "filter", reason, kind="dropped", scores=scores))
                continue
            decoded = replace(item.decoded, curation=replace(curation, scores=scores))
            out.append(CaptionedClip(decoded, item.caption))
        return out
