"""Decoded clips -> tiny Wan VAE latents -> WebDataset shards + manifest, read back with no project code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds

from dataengine.encode import VAEConfig, load_vae
from dataengine.encode.text import TextEmbedConfig, TextEmbedder
from dataengine.records import Caption, CaptionedClip, DecodedClip, EncodedClip, Failure, Source
from dataengine.samples import failure_row, to_sample
from dataengine.shards import ShardConfig, ShardWriter, read_manifest
from dataengine.stages import (
    DecodeConfig,
    DecodeStage,
    ProbeStage,
    SplitConfig,
    SplitStage,
    Stage,
    ViewConfig,
)
from dataengine.stages.encode import EncodeConfig, EncodeStage
from dataengine.world.generate import synthesize
from pipelines.local import run_chain

VAE = VAEConfig(kind="wan", model="builtin:tiny-wan")


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATAENGINE_CACHE", str(tmp_path_factory.mktemp("models")))
        yield


def _captioned(decoded: DecodedClip) -> CaptionedClip:
    # The captioner has its own tests; a fixed caption keeps this test about latents and shards.
    caption = Caption(
        caption=f"clip {decoded.clip.index}: shapes move.", short_caption="Shapes move.",
        structured={"summary": "shapes move"}, engine="fixed", model="none", prompt_id="none",
        schema_version="1", attempts=1, windows=1, output_tokens=7, seconds=0.0,
    )  # fmt: skip
    return CaptionedClip(decoded=decoded, caption=caption)


def test_clips_become_samples_that_plain_webdataset_reads_and_the_vae_decodes(tmp_path: Path) -> None:
    videos = synthesize(tmp_path / "videos", 2, seed=2, max_shots=1)
    views = {
        "caption": ViewConfig(fps=2, max_frames=4, resize="short_side", size=64),
        "latents": ViewConfig(fps=8, max_frames=None, resize="crop", width=64, height=64),
    }
    split = SplitConfig(mode="fixed", window_s=1.0, min_clip_s=0.5, max_clip_s=1.0)
    stages = [ProbeStage(), SplitStage(split), DecodeStage(DecodeConfig(views=views))]
    sources = [Source.from_uri(v) for v in videos] + [Source.from_uri(tmp_path / "missing.mp4")]
    results = list(run_chain(stages, sources))
    decoded = [r for r in results if isinstance(r, DecodedClip)]
    failures = [r for r in results if isinstance(r, Failure) and r.kind == "error"]
    encode = EncodeStage(EncodeConfig(vae=VAE))
    with encode:
        encoded = encode.process_batch([_captioned(d) for d in decoded])
    assert all(isinstance(e, EncodedClip) for e in encoded)

    embedder = TextEmbedder(TextEmbedConfig())
    embedder.setup()
    out = tmp_path / "run"
    with ShardWriter(out, ShardConfig(max_samples=3)) as writer:
        for item in encoded:
            assert isinstance(item, EncodedClip)
            (text,) = embedder.embed([item.captioned.caption.caption])
            writer.write(*to_sample(item, text))
        for failure in failures:
            writer.record_failure(failure_row(failure))

    manifest = read_manifest(out).to_pylist()
    ok = [r for r in manifest if r["status"] == "ok"]
    assert {r["clip_id"] for r in ok} == {e.clip_id for e in encoded}
    assert [r["error"] for r in manifest if r["status"] == "failed"] == [
        "missing file: no such file or directory"
    ]

    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert sorted(s["__key__"] for s in samples) == sorted(r["clip_id"] for r in ok)
    vae = load_vae(VAE)
    for sample in samples:
        latents = sample["latents.npy"]
        meta = sample["json"]
        assert latents.dtype == np.float16 and list(latents.shape) == meta["latent_shape"]
        assert meta["vae"]["latents_mean"] and meta["models"]["vae"] == "builtin:tiny-wan"
        assert sample["txt"].endswith("shapes move.") and sample["jpg"].shape == (64, 86, 3)
        assert sample["text_emb.npy"].shape == (384,) and sample["text_emb.npy"].dtype == np.float16
        frames = vae.decode(latents[None])
        assert frames.shape == (1, meta["n_frames"], 64, 64, 3)  # the clip's frames, trimmed to 1 + 4k
        assert meta["n_frames"] == 5 and meta["frame_rule"] == "trim" and meta["is_image"] is False


def test_an_image_becomes_a_one_frame_sample(images: dict[str, Path]) -> None:
    views = {
        "caption": ViewConfig(fps=2, max_frames=4, resize="short_side", size=64),
        "latents": ViewConfig(fps=8, max_frames=None, resize="crop", width=64, height=64),
    }
    stages: list[Stage[Any, Any]] = [ProbeStage(), SplitStage(), DecodeStage(DecodeConfig(views=views))]
    (decoded,) = run_chain(stages, [Source.from_uri(images["jpeg"])])
    assert isinstance(decoded, DecodedClip)
    with EncodeStage(EncodeConfig(vae=VAE)) as encode:
        (encoded,) = encode.process_batch([_captioned(decoded)])
    assert isinstance(encoded, EncodedClip)
    key, sample, row = to_sample(encoded)
    meta = sample["json"]
    assert key == decoded.clip_id and meta["is_image"] is True
    assert (meta["n_frames"], meta["fps"], meta["start_s"], meta["end_s"]) == (1, 1.0, 0.0, 1.0)
    assert sample["latents.npy"].shape[1] == meta["latent_shape"][1] == 1
    assert sample["jpg"].shape == (64, 86, 3)
    assert "is_image" not in row and row["n_frames"] == 1  # sample metadata only, not a manifest column
