"""The DiT loader picks shard buckets (``data.buckets``) from a run's manifest, on a run folder and on a run
URL (moto S3) alike; tar patterns with buckets are refused, since only a run's manifest says which shard
holds which bucket."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dataengine.config import ConfigError
from dataengine.encode.text import TextEmbedConfig
from dataengine.shards import ShardConfig, ShardWriter
from dataengine.storage import Store
from tests.trainer.dit.test_train import VAE_INFO
from trainer.dit.data import DataConfig, build_loader, expand_shards

FRAMES = {"image-1x8x8": 1, "video-2x8x8": 2}  # 6 samples each, 2 per shard: 3 shards per bucket


def write_run(run: Path | Store) -> dict[str, list[str]]:
    """A run written as the writer actors write one: a ShardWriter per bucket, the bucket in each row.
    Returns each bucket's keys."""
    rng = np.random.default_rng(0)
    keys: dict[str, list[str]] = {}
    i = 0
    for bucket, frames in FRAMES.items():
        with ShardWriter(run, ShardConfig(max_samples=2), f"w00-{bucket}") as writer:
            for _ in range(6):
                latents = rng.standard_normal((4, frames, 8, 8)).astype(np.float16)
                meta = {
                    "vae": VAE_INFO,
                    "fps": 4.0,
                    "text_encoder": TextEmbedConfig().model_dump(mode="json"),
                }
                sample = {"latents.npy": latents, "text_emb.npy": rng.standard_normal(384).astype(np.float16),
                          "txt": f"caption {i}", "json": meta}  # fmt: skip
                row = {"latent_shape": list(latents.shape), "bucket": bucket}
                writer.write(f"{i:032x}", sample, row)
                keys.setdefault(bucket, []).append(f"{i:032x}")
                i += 1
            writer.record_failure({"clip_id": f"f{i:031x}", "stage": "decode", "error": "corrupt"})
    return keys


def first_epoch(shards: str, **data: Any) -> list[str]:
    """The keys of one pass over the six samples a bucket holds, in batches of one."""
    config = DataConfig(shards=[shards], batch_size=1, num_workers=0, shuffle_buffer=2, **data)
    return [key for batch in itertools.islice(build_loader(config, 0, 1), 6) for key in batch["keys"]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    out = tmp_path_factory.mktemp("bucketed_run")
    return out, write_run(out)


def test_buckets_keep_only_the_shards_of_those_buckets(run: tuple[Path, dict[str, list[str]]]) -> None:
    out, keys = run
    assert len(expand_shards([str(out)])) == 6
    images = expand_shards([str(out)], buckets=["image-1x8x8"])
    assert len(images) == 3 and all("image-1x8x8" in u for u in images)
    assert expand_shards([str(out)], buckets=list(FRAMES)) == expand_shards([str(out)])
    assert sorted(first_epoch(str(out), buckets=["video-2x8x8"])) == keys["video-2x8x8"]


def test_buckets_need_a_run_and_a_bucket_it_has(run: tuple[Path, dict[str, list[str]]]) -> None:
    out, _ = run
    with pytest.raises(ConfigError, match=r"data\.buckets needs runs"):
        expand_shards([str(out / "shards" / "*.tar")], buckets=["image-1x8x8"])
    with pytest.raises(ConfigError, match=r"has none of them; its buckets: \['image-1x8x8', 'video-2x8x8'\]"):
        expand_shards([str(out)], buckets=["video-5x30x40"])
    with pytest.raises(ConfigError, match="is not a run"):
        expand_shards([str(out / "shards")], buckets=["image-1x8x8"])  # tars, but no manifest beside them


def test_a_run_url_is_a_shards_entry_and_its_buckets_are_picked_there(
    s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    url = f"{s3_bucket}/runs/r1"
    keys = write_run(Store(url, s3_options))
    urls = expand_shards([url], s3_options)
    assert len(urls) == 6 and all(u.startswith(f"{url}/shards/shard-w00-") for u in urls)
    assert expand_shards([f"{url}/"], s3_options) == urls  # a trailing slash names the same run
    assert expand_shards([f"{url}/shards/*.tar"], s3_options) == urls
    assert (
        sorted(first_epoch(url, buckets=["video-2x8x8"], storage_options=s3_options)) == keys["video-2x8x8"]
    )
