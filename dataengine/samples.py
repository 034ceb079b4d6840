"""An encoded clip as a WebDataset sample and a manifest row, in the format DESIGN.md fixes.

    key            the clip id (32 hex characters, no dots)
    latents.npy    float16 C x T x H x W, raw (un-normalised); ``json["vae"]`` holds the stats to normalise
    txt            the dense prose caption
    json           structured caption, short caption, source uri, time span, fps, size, model ids, VAE info,
                   ``caption_scores`` (the quality gate's mean and worst-window token log-prob, zlib ratio),
                   ``is_image`` (a still: one frame, ``n_frames=1``, over a nominal second)
    jpg            a preview frame (the middle frame of the preview view), when that view exists
    text_emb.npy   the caption's text embedding, float16 (D,) or (L, D); text_mask.npy (L,) for per-token ones
    clip_emb.npy   the clip's visual embedding, float32 (D,), L2-normalised, when the filters embed clips

A trainer needs no project code to read these: plain ``webdataset`` or ``ray.data.read_webdataset``.
"""

from __future__ import annotations

import math
from typing import Any

from dataengine.encode.text import TextEmbedding
from dataengine.records import EncodedClip, Failure

# Manifest columns whose values are the sample's json metadata, field for field.
_SHARED_WITH_ROW = (
    "clip_id", "video_id", "source", "start_s", "end_s", "fps", "width", "height", "n_frames", "latent_shape",
    "caption", "short_caption",
)  # fmt: skip


def to_sample(
    encoded: EncodedClip,
    text: TextEmbedding | None = None,
    latents_view: str = "latents",
    preview_view: str = "caption",
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The (key, sample members, manifest row) of one encoded clip, with its caption's text embedding."""
    clip, caption = encoded.clip, encoded.captioned.caption
    views = encoded.captioned.decoded.views
    frames = views[latents_view]
    _, height, width, _ = frames.shape
    models = {
        "caption": caption.model,
        "caption_engine": caption.engine,
        "vae": str(encoded.vae.get("model")),
    }
    meta = {
        "clip_id": clip.clip_id,
        "video_id": clip.video_id,
        "source": clip.uri,
        "start_s": clip.start_s,
        "end_s": clip.end_s,
        "fps": frames.fps,
        "width": width,
        "height": height,
        "n_frames": encoded.frames_used,
        "is_image": clip.probe.is_image,
        "frame_rule": encoded.frame_rule,
        "caption": caption.caption,
        "short_caption": caption.short_caption,
        "structured": caption.structured,
        "prompt_id": caption.prompt_id,
        "caption_scores": {  # the quality gate's numbers (dataengine.caption.quality), null: not reported
            "mean_logprob": caption.mean_logprob,
            "min_window_logprob": caption.min_window_logprob,
            "compression_ratio": caption.compression_ratio,
            "redraw_psnr": caption.redraw_psnr,
        },
        "schema_version": caption.schema_version,
        "models": models,
        "vae": encoded.vae,
        "latent_shape": list(encoded.latents_CTHW.shape),
    }
    curation = encoded.captioned.decoded.curation
    if curation is not None:
        meta["curation"] = {
            "scores": {k: None if math.isnan(v) else v for k, v in curation.scores.items()},
            "active_box": None if curation.active_box is None else list(curation.active_box),
        }
    sample: dict[str, Any] = {"latents.npy": encoded.latents_CTHW, "txt": caption.caption, "json": meta}
    if text is not None:
        sample.update(text.members())
    if preview_view in views:
        preview = views[preview_view].frames_THWC
        sample["jpg"] = preview[len(preview) // 2]
    row = {key: meta[key] for key in _SHARED_WITH_ROW}
    row.update(
        caption_tokens=caption.output_tokens,
        caption_mean_logprob=caption.mean_logprob,
        caption_min_window_logprob=caption.min_window_logprob,
        caption_compression_ratio=caption.compression_ratio,
        caption_redraw_psnr=caption.redraw_psnr,
        model_ids=models,
        timings={"caption_s": caption.seconds},
    )
    if curation is not None:
        row.update(curation.scores)
        if curation.fingerprint is not None:
            row.update(frames_digest=curation.fingerprint.digest, phash=list(curation.fingerprint.phash))
        if curation.embedding is not None:
            sample["clip_emb.npy"] = curation.embedding
            row["clip_emb"] = curation.embedding  # the shard writer puts it in embeddings/, not the manifest
    return clip.clip_id, sample, row


def failure_row(failure: Failure) -> dict[str, Any]:
    """The manifest row of a clip (or video, or input) that produced no sample."""
    return {
        "clip_id": failure.clip_id,
        "video_id": failure.video_id,
        "source": failure.uri,
        "start_s": failure.start_s,
        "end_s": failure.end_s,
        "status": "dropped" if failure.kind == "dropped" else "failed",
        "stage": failure.stage,
        "error": failure.reason,
        **failure.scores,
    }
