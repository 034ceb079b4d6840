"""The DiT loader with a keep-list: only the kept samples of real shards come out, the shards untouched."""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataengine.config import ConfigError
from tests.trainer.dit.test_train import write_shards
from trainer.dit.data import DataConfig, build_loader, read_keep_list

N = 16


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 samples in 4 shards, and a dedup/keep.parquet holding every third key plus an id of no sample."""
    out = write_shards(tmp_path_factory.mktemp("keep_run"), N, per_shard=4)
    (out / "dedup").mkdir()
    keep = [f"{i:032x}" for i in range(0, N, 3)] + ["f" * 32]
    pq.write_table(pa.table({"clip_id": keep}), out / "dedup" / "keep.parquet")
    return out


def one_epoch(run: Path, n: int, **data: object) -> list[str]:
    """The keys of the first ``n`` batches of one sample each: the first epoch when ``n`` samples pass."""
    config = DataConfig(shards=[str(run)], batch_size=1, num_workers=0, shuffle_buffer=4, **data)
    return [key for batch in itertools.islice(build_loader(config, 0, 1), n) for key in batch["keys"]]


def test_the_loader_yields_exactly_the_kept_keys(run: Path) -> None:
    kept = {f"{i:032x}" for i in range(0, N, 3)}
    for spec in (run, run / "dedup" / "keep.parquet"):
        assert sorted(one_epoch(run, len(kept), keep_list=str(spec))) == sorted(kept)
    two_epochs = one_epoch(run, 2 * len(kept), keep_list=str(run))
    assert sorted(two_epochs) == sorted([*kept, *kept])


def test_without_a_keep_list_every_sample_comes_even_with_a_dedup_folder(run: Path) -> None:
    assert sorted(one_epoch(run, N)) == [f"{i:032x}" for i in range(N)]


def test_a_text_keep_list_of_one_id_per_line_is_read_too(run: Path, tmp_path: Path) -> None:
    listed = tmp_path / "keep.txt"
    listed.write_text(f"{0:032x}\n{5:032x}\n")
    assert read_keep_list(str(listed)) == {f"{0:032x}", f"{5:032x}"}
    assert sorted(one_epoch(run, 2, keep_list=str(listed))) == [f"{0:032x}", f"{5:032x}"]


def test_a_folder_without_a_keep_list_is_refused_with_the_command_that_makes_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run dataengine dedup"):
        read_keep_list(str(tmp_path))
    with pytest.raises(ConfigError, match="no such file"):
        read_keep_list(str(tmp_path / "keep.parquet"))
