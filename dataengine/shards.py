"""WebDataset shards plus a parquet manifest, written so a crash never leaves a torn file under a final name.

Layout under the output root, a local folder or an fsspec URL like ``s3://bucket/run`` (``storage.Store``)::

    shards/{prefix}-{run_part}-{index:06d}.tar          one sample per clip, key = clip id
    manifest/{prefix}-{run_part}-{index:06d}.parquet    one row per clip of that shard, failures included
    embeddings/{prefix}-{run_part}-{index:06d}.parquet  clip_id + clip_emb of that shard's samples (when
                                                        rows carry ``clip_emb``), for search and dedup

Every file is written through ``Store.writing``: locally as ``.{name}.partial``, fsync'ed and renamed; on
object storage as an upload that completes (the object appears) only when the file is whole. A shard's tar is
streamed first, then its embeddings part, then its manifest part, so the manifest is the commit mark: a final
``.tar`` without a manifest (a crash between the two) is treated as never written and removed by
``cleanup_partials``, which also aborts the multipart uploads a killed writer left on S3.
A manifest may exist without a shard: it then holds only failures. Failures recorded while a shard is open go
into that shard's manifest; failures recorded with no shard open wait for the next shard, or are flushed as a
failures-only part on ``close()``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from webdataset.writer import default_handlers, encode_based_on_extension

from dataengine.config import Config
from dataengine.curate.scores import SCORES
from dataengine.storage import Store, transport_errors

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
        # The shard bucket the sample was grouped into ("video-5x30x40", "image-1x32x32"): samples of one
        # latent shape share shards, so a trainer batch comes from homogeneous shards. Null for failures.
        ("bucket", pa.string()),
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
_DIRS = ("shards", "manifest", "embeddings")
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


def _manifest_row(row: dict[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(MANIFEST_SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown manifest columns {sorted(unknown)}; known: {MANIFEST_SCHEMA.names}")
    out = {name: row.get(name) for name in MANIFEST_SCHEMA.names}
    for name in _JSON_COLUMNS:
        if out[name] is not None and not isinstance(out[name], str):
            out[name] = json.dumps(out[name], sort_keys=True)
    return out


class _AbortedError(Exception):
    """Thrown into an open ``Store.writing`` block to discard what it wrote."""


class ShardWriter:
    """Writes samples into size-bounded WebDataset shards with one manifest part per shard.

    Names are deterministic: a writer continues after the highest index already final for its
    ``prefix``/``run_part``, so a resumed run (after ``cleanup_partials``) names shards as an uninterrupted
    run would. Concurrent writers into one output must use distinct ``run_part`` values. Leaving the
    ``with`` block by an exception aborts the open shard (its clips are redone on resume) instead of
    committing it.
    """

    def __init__(
        self, out: Store | str | os.PathLike[str], config: ShardConfig, run_part: str = "00000"
    ) -> None:
        if not _KEY_RE.fullmatch(config.prefix) or not _KEY_RE.fullmatch(run_part):
            raise ValueError(
                f"prefix {config.prefix!r} and run_part {run_part!r} must match {_KEY_RE.pattern}"
            )
        self.config = config
        self.store = _as_store(out)
        if self.store.local:  # an empty run still shows its layout
            for d in ("shards", "manifest"):
                Path(self.store.path(d)).mkdir(parents=True, exist_ok=True)
        self._base = f"{config.prefix}-{run_part}-"
        own = re.compile(rf"(\.?){re.escape(self._base)}(\d{{6}})\.(?:tar|parquet)({re.escape(_PARTIAL)})?")
        found = [m for d in _DIRS for name in self.store.listdir(d) if (m := own.fullmatch(name))]
        pending = [key for d in _DIRS for key in self.store.pending_uploads(f"{d}/{self._base}")]
        if pending or any(m[3] for m in found):
            raise FileExistsError(
                f"unfinished files of a writer for {self._base}* in {self.store}: another writer uses this "
                "run_part, or a crashed run was not cleaned: call cleanup_partials(out) first"
            )
        self._next_index = max((int(m[2]) for m in found), default=-1) + 1
        self._seen: set[str] = set()
        self._rows: list[dict[str, Any]] = []  # manifest rows of the open shard, or failures waiting for one
        self._embeddings: list[dict[str, Any]] = []  # clip embeddings of the open shard
        self._writing: contextlib.AbstractContextManager[IO[bytes]] | None = None
        self._tar: tarfile.TarFile | None = None
        self._stem = ""
        self._n_samples = 0
        self._payload_bytes = 0
        self.written: list[str] = []  # final shard URIs (local paths for a local store), in order

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
        """Drop the open shard and the rows not yet committed: nothing appears under a final name."""
        writing, self._writing, self._tar, self._rows, self._embeddings = self._writing, None, None, [], []
        if writing is not None:
            writing.__exit__(_AbortedError, _AbortedError(), None)  # discards the partial file or upload

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
        self._writing = self.store.writing("shards", f"{self._stem}.tar")
        fileobj = self._writing.__enter__()
        self._tar = tarfile.TarFile(fileobj=fileobj, mode="w", copybufsize=_COPY_CHUNK)
        self._n_samples, self._payload_bytes = 0, 0

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._writing is not None
        self._tar.close()  # writes the end-of-archive blocks and record padding; the file object stays open
        writing, self._writing, self._tar = self._writing, None, None
        writing.__exit__(None, None, None)  # the tar appears under its final name
        self.written.append(self.store.uri("shards", f"{self._stem}.tar"))
        if self._embeddings:
            self._write_parquet("embeddings", self._stem, self._embeddings, EMBEDDINGS_SCHEMA)
            self._embeddings = []
        self._write_manifest(self._stem)

    def _write_manifest(self, stem: str) -> None:
        self._write_parquet("manifest", stem, self._rows, MANIFEST_SCHEMA)
        self._rows = []

    def _write_parquet(
        self, directory: str, stem: str, rows: list[dict[str, Any]], schema: pa.Schema
    ) -> None:
        table = pa.Table.from_pylist(rows, schema=schema)
        with self.store.writing(directory, f"{stem}.parquet") as f:
            pq.write_table(table, f)


def cleanup_partials(out: Store | str | os.PathLike[str], stem_prefix: str = "") -> list[str]:
    """Remove what crashed writers left: temporary files, final shards and embeddings parts that never got
    their manifest, and (S3) unfinished multipart uploads.

    Only names starting with ``stem_prefix`` are touched (after the leading ``.`` of a temporary file), so
    drivers sharing one output (``stem_prefix="shard-p01of04-"``) each clean their own. Call it at the start
    of a resuming run, before any writer of those names opens. Returns the removed URIs (local paths), sorted.
    """
    store = _as_store(out)
    cleared = [rel for d in _DIRS for rel in store.clear_partials(d, stem_prefix)]
    committed = set(_parts(store, "manifest"))
    orphans: list[str] = []
    for d, suffix in (("shards", ".tar"), ("embeddings", ".parquet")):
        orphans += [
            f"{d}/{name}" for name in store.listdir(d)
            if name.startswith(stem_prefix) and not name.startswith(".") and name.endswith(suffix)
            and f"{name.removesuffix(suffix)}.parquet" not in committed
        ]  # fmt: skip
    store.remove(*orphans)
    return sorted(store.uri(rel) for rel in cleared + orphans)


def manifest_part_rows(out: Store | str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Each committed manifest part of a run as (part name, rows), in name order, read from footers only."""
    store = _as_store(out)
    counts = []
    for part in _parts(store, "manifest"):
        with transport_errors(store.uri("manifest", part)), store.fs.open(store.path("manifest", part)) as f:
            counts.append((part, pq.ParquetFile(f).metadata.num_rows))
    return counts


def iter_manifest_parts(
    out: Store | str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    stem_prefix: str = "",
    parts: Sequence[str] | None = None,
) -> Iterator[tuple[str, pa.Table]]:
    """Each committed manifest part of a run (whose name starts with ``stem_prefix``; only ``parts`` when
    given) as (part name, table), in name order, one in memory at a time.

    Tables have MANIFEST_SCHEMA's types, restricted to ``columns`` (in that order) when given; parts written
    before a column existed read as nulls in it, so older runs stay readable.

    Raises:
        ValueError: a column that is not in MANIFEST_SCHEMA.
    """
    names = list(MANIFEST_SCHEMA.names if columns is None else columns)
    unknown = set(names) - set(MANIFEST_SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown manifest columns {sorted(unknown)}; known: {MANIFEST_SCHEMA.names}")
    schema = pa.schema([MANIFEST_SCHEMA.field(n) for n in names])
    store = _as_store(out)
    chosen = _parts(store, "manifest") if parts is None else sorted(parts)
    for part in (p for p in chosen if p.startswith(stem_prefix)):
        with transport_errors(store.uri("manifest", part)), store.fs.open(store.path("manifest", part)) as f:
            parquet = pq.ParquetFile(f)
            present = [n for n in names if n in parquet.schema_arrow.names]
            table = parquet.read(columns=present)
        yield part, _with_schema(table, schema, parquet.metadata.num_rows)


def read_manifest(out: Store | str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """All committed manifest parts of a run, concatenated in part-name order (empty table if none);
    ``columns`` as in ``iter_manifest_parts``."""
    tables = [table for _, table in iter_manifest_parts(out, columns)]
    if tables:
        return pa.concat_tables(tables)
    return pa.schema([MANIFEST_SCHEMA.field(n) for n in columns or MANIFEST_SCHEMA.names]).empty_table()


def read_embeddings(out: Store | str | os.PathLike[str]) -> pa.Table:
    """The clip embeddings of a run's committed shards (``clip_id``, ``clip_emb``); empty if none."""
    store = _as_store(out)
    committed = set(_parts(store, "manifest"))
    tables = []
    for part in _parts(store, "embeddings"):
        if part in committed:
            uri = store.uri("embeddings", part)
            with transport_errors(uri), store.fs.open(store.path("embeddings", part)) as f:
                tables.append(pq.read_table(f, schema=EMBEDDINGS_SCHEMA))
    return pa.concat_tables(tables) if tables else EMBEDDINGS_SCHEMA.empty_table()


def completed_keys(out: Store | str | os.PathLike[str], include_failed: bool = True) -> set[str]:
    """Clip ids a resumed run can skip: a committed sample or (by default) a recorded failure."""
    table = read_manifest(out, columns=("clip_id", "status"))
    ids, statuses = table.column("clip_id").to_pylist(), table.column("status").to_pylist()
    return {c for c, s in zip(ids, statuses, strict=True) if c is not None and (include_failed or s == "ok")}


def _as_store(out: Store | str | os.PathLike[str]) -> Store:
    return out if isinstance(out, Store) else Store(out)


def _parts(store: Store, directory: str) -> list[str]:
    """Committed parquet parts of ``directory`` (temporary ``.partial`` files excluded), sorted."""
    return [n for n in store.listdir(directory) if n.endswith(".parquet") and not n.startswith(".")]


def _with_schema(table: pa.Table, schema: pa.Schema, num_rows: int) -> pa.Table:
    """``table`` in ``schema``'s column order and types, columns it lacks filled with ``num_rows`` nulls."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)
