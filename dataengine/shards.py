"""WebDataset shards plus a parquet manifest, written so a crash never leaves a torn file under a final name.

Layout under ``out_dir``::

    shards/{prefix}-{run_part}-{index:06d}.tar          one sample per clip, key = clip id
    manifest/{prefix}-{run_part}-{index:06d}.parquet    one row per clip of that shard, failures included
    embeddings/{prefix}-{run_part}-{index:06d}.parquet  clip_id + clip_emb of that shard's samples (when
                                                        rows carry ``clip_emb``), for search and dedup

A shard is written to ``shards/.{stem}.tar.partial``, fsync'ed and renamed when complete; its embeddings
part, then its manifest are written the same way *after* the rename, so the manifest is the commit mark: a
final ``.tar`` without a manifest (a crash between the two renames) is treated as never written and removed by
``cleanup_partials``.
A manifest may exist without a shard: it then holds only failures. Failures recorded while a shard is open go
into that shard's manifest; failures recorded with no shard open wait for the next shard, or are flushed as a
failures-only part on ``close()``.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from webdataset.writer import default_handlers, encode_based_on_extension

from dataengine.config import Config
from dataengine.curate.scores import SCORES

MANIFEST_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("source", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("n_frames", pa.int32()),
        ("latent_shape", pa.list_(pa.int32())),
        ("shard", pa.string()),
        ("caption", pa.string()),
        ("short_caption", pa.string()),
        ("caption_tokens", pa.int32()),
        # The quality gate's numbers for the caption (dataengine.caption.quality): null when not measured.
        ("caption_mean_logprob", pa.float64()),
        ("caption_min_window_logprob", pa.float64()),
        ("caption_compression_ratio", pa.float64()),
        ("caption_redraw_psnr", pa.float64()),  # dB, captioners with a verifier (caption.verify)
        ("model_ids", pa.string()),  # JSON object: role -> model id
        ("status", pa.string()),  # "ok", "failed" or "dropped"
        ("stage", pa.string()),
        ("error", pa.string()),
        ("timings", pa.string()),  # JSON object: stage -> seconds
        # Curation (dataengine.curate): every score the filters measured (units: curate.scores.SCORES), for
        # kept and dropped clips alike; the exact digest and perceptual hashes the duplicate index keeps.
        *((name, pa.float64()) for name in SCORES),
        ("frames_digest", pa.string()),
        ("phash", pa.list_(pa.uint64())),
    ]
)
EMBEDDINGS_SCHEMA = pa.schema([("clip_id", pa.string()), ("clip_emb", pa.list_(pa.float32()))])
_JSON_COLUMNS = ("model_ids", "timings")
_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,80}")  # no dots: webdataset splits key and extension at the first dot
_PARTIAL = ".partial"
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_MTIME = 0  # a fixed integer mtime: identical shards for identical samples, and no per-member PAX header
_COPY_CHUNK = 1 << 20  # bytes handed to the file per write when copying a member


class ShardConfig(Config):
    """Shard size limits and file naming."""

    max_samples: int = 1000
    max_bytes: int = 1 << 30  # the whole .tar file, end padding included; one sample may exceed it alone
    prefix: str = "shard"


def _tar_size(payload_bytes: int) -> int:
    """Size of a finished stream-mode tar holding ``payload_bytes`` of members (end marker, padding)."""
    return -(-(payload_bytes + 2 * _BLOCK) // _RECORD) * _RECORD


def _member_bytes(members: dict[str, list[bytes | memoryview]]) -> int:
    """Tar bytes of one sample: a header block per member (short ASCII name, integer mtime) + padded data."""
    return sum(_BLOCK + -(-_length(pieces) // _BLOCK) * _BLOCK for pieces in members.values())


def _length(pieces: list[bytes | memoryview]) -> int:
    return sum(len(p) for p in pieces)


def _encode(key: str, sample: dict[str, Any]) -> dict[str, list[bytes | memoryview]]:
    """Each member's bytes as pieces: arrays as an npy header plus a view of their memory (no copy);
    everything else through webdataset's own encoders (json, txt, jpg, ...)."""
    arrays = {k: v for k, v in sample.items() if k.endswith(".npy") and isinstance(v, np.ndarray)}
    others = {k: v for k, v in sample.items() if k not in arrays}
    encoded = encode_based_on_extension({"__key__": key, **others}, default_handlers)
    members: dict[str, list[bytes | memoryview]] = {k: [v] for k, v in encoded.items() if k != "__key__"}
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise ValueError(f"member {name!r}: arrays of Python objects cannot be stored")
        array = np.ascontiguousarray(array)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
        members[name] = [header.getvalue(), array.data.cast("B")]
    return dict(sorted(members.items()))


class _Pieces:
    """A read-only file over byte pieces that hands out views, so tarfile copies each byte once, to the file.

    ``tarfile.copyfileobj`` asks for fixed-size reads; a read that spans two pieces is the only copy made.
    """

    def __init__(self, pieces: list[bytes | memoryview]) -> None:
        self._pieces = [memoryview(p) for p in pieces]
        self._index, self._pos = 0, 0

    def read(self, n: int) -> bytes | memoryview:
        out: list[memoryview] = []
        while n > 0 and self._index < len(self._pieces):
            piece = self._pieces[self._index]
            take = piece[self._pos : self._pos + n]
            out.append(take)
            n -= len(take)
            self._pos += len(take)
            if self._pos == len(piece):
                self._index, self._pos = self._index + 1, 0
        return out[0] if len(out) == 1 else b"".join(out)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, final: Path, f: IO[bytes]) -> None:
    """Flush ``f`` (the open temp file) to disk, close it and atomically give it its final name."""
    f.flush()
    os.fsync(f.fileno())
    f.close()
    tmp.replace(final)
    _fsync_dir(final.parent)


def _manifest_row(row: dict[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(MANIFEST_SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown manifest columns {sorted(unknown)}; known: {MANIFEST_SCHEMA.names}")
    out = {name: row.get(name) for name in MANIFEST_SCHEMA.names}
    for name in _JSON_COLUMNS:
        if out[name] is not None and not isinstance(out[name], str):
            out[name] = json.dumps(out[name], sort_keys=True)
    return out


class ShardWriter:
    """Writes samples into size-bounded WebDataset shards with one manifest part per shard.

    Names are deterministic: a writer continues after the highest index already final for its
    ``prefix``/``run_part``, so a resumed run (after ``cleanup_partials``) names shards as an uninterrupted
    run would. Concurrent writers into one ``out_dir`` must use distinct ``run_part`` values. Leaving the
    ``with`` block by an exception aborts the open shard (its clips are redone on resume) instead of
    committing it.
    """

    def __init__(self, out_dir: Path, config: ShardConfig, run_part: str = "00000") -> None:
        if not _KEY_RE.fullmatch(config.prefix) or not _KEY_RE.fullmatch(run_part):
            raise ValueError(
                f"prefix {config.prefix!r} and run_part {run_part!r} must match {_KEY_RE.pattern}"
            )
        self.config = config
        self.shard_dir, self.manifest_dir = Path(out_dir) / "shards", Path(out_dir) / "manifest"
        self.embedding_dir = Path(out_dir) / "embeddings"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_dir.mkdir(parents=True, exist_ok=True)
        self._base = f"{config.prefix}-{run_part}-"
        own = re.compile(rf"(\.?){re.escape(self._base)}(\d{{6}})\.(?:tar|parquet)({re.escape(_PARTIAL)})?")
        names = [p.name for d in (self.shard_dir, self.manifest_dir) for p in d.iterdir()]
        found = [m for name in names if (m := own.fullmatch(name))]
        if any(m[3] for m in found):
            raise FileExistsError(
                f"temporary files of an unfinished writer for {self._base}* in {out_dir}: another writer "
                "uses this run_part, or a crashed run was not cleaned: call cleanup_partials(out_dir) first"
            )
        self._next_index = max((int(m[2]) for m in found), default=-1) + 1
        self._seen: set[str] = set()
        self._rows: list[dict[str, Any]] = []  # manifest rows of the open shard, or failures waiting for one
        self._embeddings: list[dict[str, Any]] = []  # clip embeddings of the open shard
        self._file: IO[bytes] | None = None
        self._tar: tarfile.TarFile | None = None
        self._stem = ""
        self._n_samples = 0
        self._payload_bytes = 0
        self.written: list[Path] = []  # final shard paths, in order

    # --- public API -----------------------------------------------------------------------------------------

    def write(self, key: str, sample: dict[str, Any], row: dict[str, Any]) -> None:
        """Add one sample (``{"latents.npy": array, "txt": str, ...}``) and its manifest row.

        Raises:
            ValueError: a key with dots or other characters outside ``[A-Za-z0-9_-]``, a key already written
                by this writer, a sample that does not encode (unknown extension), or a bad manifest row.
                Nothing is written to the shard in any of these cases.
        """
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"sample key {key!r} must match {_KEY_RE.pattern} (a WebDataset key: no dots)")
        if key in self._seen:
            raise ValueError(f"sample key {key!r} was already written by this writer")
        if "__key__" in sample or any(k.startswith("_") for k in sample):
            raise ValueError(f"sample members may not start with '_': {sorted(sample)}")
        if {"shard", "status"} & set(row) or row.get("clip_id", key) != key:
            raise ValueError(f"row may not set shard/status, and its clip_id must be the key {key!r}")
        members = _encode(key, sample)
        row = dict(row)
        embedding = row.pop("clip_emb", None)
        manifest_row = _manifest_row({**row, "clip_id": key, "status": "ok"})
        size = _member_bytes(members)
        if self._tar is not None and (
            self._n_samples >= self.config.max_samples
            or _tar_size(self._payload_bytes + size) > self.config.max_bytes
        ):
            self._finish_shard()
        if self._tar is None:
            self._open_shard()
        assert self._tar is not None
        for name, pieces in members.items():
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mtime, info.mode = _length(pieces), _MTIME, 0o444
            self._tar.addfile(info, _Pieces(pieces))  # type: ignore[arg-type]  # read() is all tarfile uses
        self._tar.members.clear()  # type: ignore[attr-defined]  # it would keep every TarInfo of the shard
        self._seen.add(key)
        self._rows.append({**manifest_row, "shard": f"{self._stem}.tar"})
        if embedding is not None:
            self._embeddings.append({"clip_id": key, "clip_emb": np.asarray(embedding, np.float32)})
        self._n_samples += 1
        self._payload_bytes = self._tar.offset  # exact, headers included

    def record_failure(self, row: dict[str, Any]) -> None:
        """Record a clip (or video) that produced no sample; ``row`` needs ``stage`` and ``error``.

        ``status`` defaults to ``"failed"`` (``"dropped"`` marks deliberate filtering).
        """
        row = {"status": "failed", **row}
        if row["status"] not in ("failed", "dropped") or not row.get("stage") or not row.get("error"):
            raise ValueError(f"a failure row needs status failed/dropped, a stage and an error; got {row}")
        if row.get("shard") is not None:
            raise ValueError("a failure row has no shard")
        self._rows.append(_manifest_row(row))
        if self._tar is None and len(self._rows) >= self.config.max_samples:
            self._write_manifest(self._take_index())  # bound the failures held in memory

    def close(self) -> None:
        """Commit the open shard and its manifest, and any failures still waiting, as a failures-only part."""
        if self._tar is not None:
            self._finish_shard()
        elif self._rows:
            self._write_manifest(self._take_index())

    def abort(self) -> None:
        """Drop the open shard and the rows not yet committed; nothing is renamed to a final name."""
        if self._file is not None:
            self._file.close()
            (self.shard_dir / f".{self._stem}.tar{_PARTIAL}").unlink(missing_ok=True)
        self._file, self._tar, self._rows, self._embeddings = None, None, [], []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # --- shard lifecycle ------------------------------------------------------------------------------------

    def _take_index(self) -> str:
        stem = f"{self._base}{self._next_index:06d}"
        self._next_index += 1
        return stem

    def _open_shard(self) -> None:
        self._stem = self._take_index()
        self._file = (self.shard_dir / f".{self._stem}.tar{_PARTIAL}").open("xb")
        self._tar = tarfile.TarFile(fileobj=self._file, mode="w", copybufsize=_COPY_CHUNK)
        self._n_samples, self._payload_bytes = 0, 0

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._file is not None
        self._tar.close()  # writes the end-of-archive blocks and record padding; the file object stays open
        final = self.shard_dir / f"{self._stem}.tar"
        _commit(self.shard_dir / f".{self._stem}.tar{_PARTIAL}", final, self._file)
        self.written.append(final)
        self._file, self._tar = None, None
        if self._embeddings:
            self._write_parquet(self.embedding_dir, self._stem, self._embeddings, EMBEDDINGS_SCHEMA)
            self._embeddings = []
        self._write_manifest(self._stem)

    def _write_manifest(self, stem: str) -> None:
        self._write_parquet(self.manifest_dir, stem, self._rows, MANIFEST_SCHEMA)
        self._rows = []

    @staticmethod
    def _write_parquet(directory: Path, stem: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
        directory.mkdir(exist_ok=True)
        table = pa.Table.from_pylist(rows, schema=schema)
        tmp = directory / f".{stem}.parquet{_PARTIAL}"
        with tmp.open("xb") as f:
            pq.write_table(table, f)
            _commit(tmp, directory / f"{stem}.parquet", f)


def cleanup_partials(out_dir: Path) -> list[Path]:
    """Remove what a crashed writer left: temporary files, and final shards that never got their manifest.

    Call it once at the start of a resuming run, before any writer opens. Returns the removed paths.
    """
    shard_dir, manifest_dir = Path(out_dir) / "shards", Path(out_dir) / "manifest"
    embedding_dir = Path(out_dir) / "embeddings"
    dirs = (shard_dir, manifest_dir, embedding_dir)
    removed = [p for d in dirs if d.is_dir() for p in d.glob(f".*{_PARTIAL}")]
    for d, pattern in ((shard_dir, "*.tar"), (embedding_dir, "*.parquet")):
        if d.is_dir():
            removed += [p for p in d.glob(pattern) if not (manifest_dir / f"{p.stem}.parquet").exists()]
    for p in removed:
        p.unlink()
    return sorted(removed)


def read_manifest(out_dir: Path) -> pa.Table:
    """All committed manifest parts of a run, concatenated in file-name order (empty table if none).

    Parts written before a column existed read as nulls in it, so older runs stay readable.
    """
    parts = sorted((Path(out_dir) / "manifest").glob("*.parquet"))
    tables = [_with_schema(pq.read_table(p)) for p in parts]
    return pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()


def read_embeddings(out_dir: Path) -> pa.Table:
    """The clip embeddings of a run's committed shards (``clip_id``, ``clip_emb``); empty if none."""
    manifest_dir = Path(out_dir) / "manifest"
    parts = [
        p for p in sorted((Path(out_dir) / "embeddings").glob("*.parquet"))
        if (manifest_dir / p.name).exists()  # committed: its manifest part exists
    ]  # fmt: skip
    tables = [pq.read_table(p, schema=EMBEDDINGS_SCHEMA) for p in parts]
    return pa.concat_tables(tables) if tables else EMBEDDINGS_SCHEMA.empty_table()


def _with_schema(table: pa.Table) -> pa.Table:
    """``table`` in MANIFEST_SCHEMA's column order and types, columns it lacks filled with nulls."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in MANIFEST_SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=MANIFEST_SCHEMA)


def completed_keys(out_dir: Path, include_failed: bool = True) -> set[str]:
    """Clip ids a resumed run can skip: a committed sample or (by default) a recorded failure."""
    table = read_manifest(out_dir)
    ids, statuses = table.column("clip_id").to_pylist(), table.column("status").to_pylist()
    return {c for c, s in zip(ids, statuses, strict=True) if c is not None and (include_failed or s == "ok")}
