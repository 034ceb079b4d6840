"""The encode stage and the VAE interface, on tiny real diffusers autoencoders built offline."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from dataengine.config import ConfigError
from dataengine.encode import VAE, VAEConfig, ensure_tiny_vae, load_vae, normalization, resolve_vae
from dataengine.records import (
    Caption,
    CaptionedClip,
    Clip,
    DecodedClip,
    EncodedClip,
    Failure,
    Frames,
    ProbeInfo,
    Source,
)
from dataengine.stages import DecodeConfig, DecodeStage, ProbeStage, SplitStage, Stage, ViewConfig
from dataengine.stages.encode import EncodeConfig, EncodeStage
from pipelines.local import run_chain

KINDS = ["wan", "ltx", "cogvideox", "kl"]


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("models")
        mp.setenv("DATAENGINE_CACHE", str(root))
        yield root


def _stage(kind: str, **vae: object) -> EncodeStage:
    stage = EncodeStage(EncodeConfig(vae=VAEConfig(kind=kind, model=f"builtin:tiny-{kind}", **vae)))
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def stages() -> dict[str, EncodeStage]:
    return {kind: _stage(kind) for kind in KINDS}


def _probe() -> ProbeInfo:
    return ProbeInfo(
        duration_s=10.0, avg_fps=24.0, r_fps=24.0, n_frames=240, n_frames_exact=True, width=64, height=64,
        rotation=0, codec="h264", pix_fmt="yuv420p", bit_depth=8, is_vfr=False, has_audio=False,
        container="mp4", size_bytes=1000,
    )  # fmt: skip


def _captioned(index: int, t: int, h: int = 64, w: int = 64, view: str = "latents") -> CaptionedClip:
    source = Source.from_uri(f"/videos/{index}.mp4")
    clip = Clip(
        clip_id=f"clip{index}", video_id=source.video_id, uri=source.uri, path="/videos/x.mp4", index=index,
        start_s=0.0, end_s=t / 24, shot=0, probe=_probe(),
    )  # fmt: skip
    frames_THWC = np.random.default_rng(index).integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    frames = Frames(frames_THWC, fps=24.0, timestamps_s=np.arange(t) / 24)
    return _with_caption(DecodedClip(clip=clip, views={view: frames}))


def _with_caption(decoded: DecodedClip) -> CaptionedClip:
    caption = Caption(
        caption="a test clip", short_caption="test", structured={}, engine="none", model="none",
        prompt_id="none", schema_version="1", attempts=1, windows=1, output_tokens=0, seconds=0.0,
    )  # fmt: skip
    return CaptionedClip(decoded=decoded, caption=caption)


@pytest.mark.parametrize("kind", KINDS)
def test_encode_decode_shapes(kind: str, stages: dict[str, EncodeStage]) -> None:
    stage = stages[kind]
    vae = stage.vae
    batch = [_captioned(0, 9), _captioned(1, 9)]
    out = stage.process_batch(batch)
    assert [r.clip_id for r in out] == ["clip0", "clip1"]
    s, tc = vae.spatial_compression, vae.temporal_compression
    t_latent = 9 if kind == "kl" else 1 + (9 - 1) // tc
    for record in out:
        assert isinstance(record, EncodedClip)
        assert record.latents_CTHW.dtype == np.float16
        assert record.latents_CTHW.shape == (vae.info["latent_channels"], t_latent, 64 // s, 64 // s)
        assert np.isfinite(record.latents_CTHW).all()
        assert record.frames_used == 9
    first, second = out
    assert isinstance(first, EncodedClip) and isinstance(second, EncodedClip)
    assert not np.array_equal(first.latents_CTHW, second.latents_CTHW)

    decoded = vae.decode(np.stack([first.latents_CTHW, second.latents_CTHW]))
    assert decoded.dtype == np.uint8
    assert decoded.shape == (2, 9, 64, 64, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_an_image_encodes_to_one_latent_frame(
    kind: str, stages: dict[str, EncodeStage], images: dict[str, Path]
) -> None:
    views = {"latents": ViewConfig(fps=16, max_frames=None, resize="crop", width=64, height=64)}
    clip_stages: list[Stage[Any, Any]] = [ProbeStage(), SplitStage(), DecodeStage(DecodeConfig(views=views))]
    (decoded,) = run_chain(clip_stages, [Source.from_uri(images["png"])])
    assert isinstance(decoded, DecodedClip) and decoded.views["latents"].shape == (1, 64, 64, 3)
    vae = stages[kind].vae
    (record,) = stages[kind].process_batch([_with_caption(decoded)])
    assert isinstance(record, EncodedClip) and record.frames_used == 1
    s = vae.spatial_compression
    assert record.latents_CTHW.shape == (vae.info["latent_channels"], 1, 64 // s, 64 // s)
    assert np.isfinite(record.latents_CTHW).all()
    assert vae.decode(record.latents_CTHW[None]).shape == (1, 1, 64, 64, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_alone(kind: str, stages: dict[str, EncodeStage]) -> None:
    vae = stages[kind].vae
    frames = np.stack([_captioned(i, 9).decoded.views["latents"].frames_THWC for i in range(3)])
    together = vae.encode(frames)
    alone = np.concatenate([vae.encode(frames[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together.astype(np.float32), alone.astype(np.float32), atol=2e-3)


def test_info_and_normalization(stages: dict[str, EncodeStage]) -> None:
    wan, ltx, cog, kl = (stages[k].vae.info for k in KINDS)
    assert wan["class"] == "AutoencoderKLWan" and wan["latent_dist"] == "mode"
    assert wan["latents_mean"] == pytest.approx([0.1, -0.2, 0.3, 0.05])
    assert (wan["spatial_compression"], wan["temporal_compression"]) == (8, 4)
    assert ltx["latents_std"] is not None and len(ltx["latents_std"]) == ltx["latent_channels"]
    assert ltx["latents_std"] != [1.0] * ltx["latent_channels"]  # the buffers, not the init defaults
    assert (ltx["spatial_compression"], ltx["temporal_compression"]) == (32, 8)
    assert cog["scaling_factor"] == pytest.approx(1.15258426) and cog["latents_mean"] is None
    assert kl["shift_factor"] == pytest.approx(0.0609) and kl["temporal_compression"] == 1
    assert kl["frame_rule"] == "none"
    assert all(json.loads(json.dumps(info)) == info for info in (wan, ltx, cog, kl))  # manifest-ready

    mean, scale = normalization(wan)
    np.testing.assert_allclose(scale, 1 / np.array([1.5, 2.0, 0.5, 1.25]), rtol=1e-6)
    mean, scale = normalization(kl)
    np.testing.assert_allclose(mean, [0.0609] * 4, rtol=1e-6)
    np.testing.assert_allclose(scale, [1.5035] * 4, rtol=1e-6)
    mean, scale = normalization(ltx)
    assert mean.shape == scale.shape == (ltx["latent_channels"],)


@pytest.mark.parametrize(("rule", "used"), [("trim", 9), ("pad", 13)])
def test_frame_rule(rule: str, used: int) -> None:
    stage = _stage("wan", frame_rule=rule)
    (record,) = stage.process_batch([_captioned(0, 10)])
    assert isinstance(record, EncodedClip)
    assert (record.frames_used, record.frame_rule) == (used, rule)
    assert record.latents_CTHW.shape[1] == 1 + (used - 1) // 4
    assert stage.vae.decode(record.latents_CTHW[None]).shape == (1, used, 64, 64, 3)


def test_frame_rule_pads_with_last_frame(stages: dict[str, EncodeStage]) -> None:
    vae = load_vae(VAEConfig(model="builtin:tiny-wan", frame_rule="pad"))
    frames = _captioned(0, 6).decoded.views["latents"].frames_THWC
    fitted = vae.fit(frames)
    assert len(fitted) == 9
    assert (fitted[6:] == frames[-1]).all() and (fitted[:6] == frames).all()
    assert [vae.frames_used(t) for t in (0, 1, 2, 5, 9)] == [0, 1, 5, 5, 9]
    assert [stages["wan"].vae.frames_used(t) for t in (0, 1, 2, 5, 8)] == [0, 1, 1, 5, 5]
    assert [stages["kl"].vae.frames_used(t) for t in (1, 2, 10)] == [1, 2, 10]


def test_mixed_batch_keeps_order_and_fails_per_clip(stages: dict[str, EncodeStage]) -> None:
    batch = [
        _captioned(0, 9),
        _captioned(1, 9, view="caption"),
        _captioned(2, 5, h=32, w=96),
        _captioned(3, 0),
        _captioned(4, 9, h=60),
        _captioned(5, 9),
    ]
    out = stages["wan"].process_batch(batch)
    assert [r.clip_id for r in out] == [f"clip{i}" for i in range(6)]
    assert [type(r).__name__ for r in out] == [
        "EncodedClip", "Failure", "EncodedClip", "Failure", "Failure", "EncodedClip",
    ]  # fmt: skip
    missing, empty, odd = out[1], out[3], out[4]
    assert isinstance(missing, Failure) and missing.stage == "encode"
    assert "no decoded view 'latents'" in missing.reason and "caption" in missing.reason
    assert isinstance(empty, Failure) and "0 frames" in empty.reason
    assert isinstance(odd, Failure) and "multiples of 8" in odd.reason
    wide = out[2]
    assert isinstance(wide, EncodedClip) and wide.latents_CTHW.shape[1:] == (2, 4, 12)


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        VAEConfig(model="builtin:tiny-wan", frame_rules="pad")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        EncodeConfig(vae=VAEConfig(model="builtin:tiny-wan"), views="latents")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        VAEConfig.model_validate({"model": "builtin:tiny-wan", "dtype": "float64"})
    with pytest.raises(ValidationError):
        VAEConfig.model_validate({"kind": "wan"})  # model is required


def test_builtin_names_and_class_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a built-in VAE of kind 'wan'"):
        resolve_vae("builtin:tiny-ltx", "wan")
    assert resolve_vae("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan") == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    with pytest.raises(ConfigError, match="holds a AutoencoderKLLTXVideo"):
        load_vae(VAEConfig(kind="wan", model=str(ensure_tiny_vae("ltx"))))
    assert ensure_tiny_vae("kl", cache_root=tmp_path) == ensure_tiny_vae("kl", cache_root=tmp_path)


def test_pipeline_layout_finds_vae_subfolder(tmp_path: Path) -> None:
    shutil.copytree(ensure_tiny_vae("kl"), tmp_path / "pipe" / "vae")
    vae = load_vae(VAEConfig(kind="kl", model=str(tmp_path / "pipe")))
    assert isinstance(vae, VAE) and vae.info["class"] == "AutoencoderKL"


def test_stage_needs_setup() -> None:
    stage = EncodeStage(EncodeConfig(vae=VAEConfig(model="builtin:tiny-wan")))
    with pytest.raises(RuntimeError, match="setup"):
        stage.process_batch([_captioned(0, 9)])
