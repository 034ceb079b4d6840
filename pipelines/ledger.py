"""The resume ledger on disk: which clips and videos are done, and what each finished split produced.

Two sources of truth live in the run's output, and the ledger is rebuilt from them on every start:

- the manifest parts: a clip is done once a committed part holds its row (sample or failure); a video is done
  once a video-level failure row names it;
- the split parts (``splits/{tag}{index:06d}.parquet``): one row per video whose probe and split finished,
  holding every record the split made (its clips and its dropped spans, as JSON), so a resume never probes or
  splits that video again; it replays the records and skips the clips already done.

Both are read part by part into a SQLite file in a private temporary folder (one table of done ids, one of
split records keyed by source), so the driver holds no Python set of ids: its memory stays flat from 10^4
to 10^6 clips. The ids the run handles are added to the same table as it goes (inputs may repeat).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import TypeAdapter

from dataengine.curate.dedup import DuplicateIndex, NearDupConfig
from dataengine.records import Clip, Failure
from dataengine.shards import iter_manifest_parts
from dataengine.storage import Store

SPLITS = "splits"
SPLITS_SCHEMA = pa.schema([("source", pa.string()), ("records", pa.list_(pa.string()))])
_RECORD = TypeAdapter(Clip | Failure)
_BATCH = 10_000


class Ledger:
    """Done ids and finished splits, on disk. ``read`` builds it from a run's committed parts."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="dataengine-ledger-"))
        self._db = sqlite3.connect(self._dir / "ledger.sqlite", isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-8192", "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE done (id TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("CREATE TABLE splits (source TEXT PRIMARY KEY, records TEXT) WITHOUT ROWID")
        self.resumed_clips = 0
        self._since_commit = 0
        self._db.execute("BEGIN")

    @classmethod
    def read(cls, store: Store, dedup: NearDupConfig | None = None) -> tuple[Ledger, DuplicateIndex]:
        """The ledger of ``store``'s committed parts, and the duplicate index seeded from the rows of clips
        that passed it (so committed decisions are made the same way again)."""
        ledger, index = cls(), DuplicateIndex(dedup)
        columns = ["clip_id", "source", "frames_digest", "phash"]
        for _, table in iter_manifest_parts(store, columns=columns):
            clips = table.filter(pc.is_valid(table.column("clip_id")))
            ledger._insert(clips.column("clip_id").to_pylist())
            ledger.resumed_clips += len(clips)
            videos = table.filter(
                pc.and_(pc.is_null(table.column("clip_id")), pc.is_valid(table.column("source")))
            )
            ledger._insert(videos.column("source").to_pylist())
            passed = table.filter(pc.is_valid(table.column("phash")))
            if len(passed) and index.config.enabled:  # dedup off: no index to seed (~200 bytes a clip)
                index.extend(*(passed.column(c).to_pylist() for c in columns if c != "source"))
        for name in store.listdir(SPLITS):
            if name.endswith(".parquet") and not name.startswith("."):
                with store.fs.open(store.path(SPLITS, name), "rb") as f:
                    table = pq.read_table(f, schema=SPLITS_SCHEMA)
                for batch in table.to_batches(_BATCH):
                    sources, records = batch.column(0).to_pylist(), batch.column(1).to_pylist()
                    rows = [(s, "\n".join(r)) for s, r in zip(sources, records, strict=True)]
                    ledger._db.executemany("INSERT OR REPLACE INTO splits VALUES (?, ?)", rows)
        ledger._db.execute("COMMIT")
        ledger._db.execute("BEGIN")
        return ledger, index

    def _insert(self, ids: Sequence[str]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO done VALUES (?)", ((i,) for i in ids))

    def __contains__(self, key: object) -> bool:
        return self._db.execute("SELECT 1 FROM done WHERE id = ?", (key,)).fetchone() is not None

    def mark(self, key: str) -> bool:
        """Record ``key`` as handled by this run; False when it was already done or handled."""
        added = self._db.execute("INSERT OR IGNORE INTO done VALUES (?)", (key,)).rowcount == 1
        self._since_commit += 1
        if self._since_commit >= _BATCH:  # keep transactions bounded
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")
            self._since_commit = 0
        return added

    def split_of(self, source: str) -> list[Clip | Failure] | None:
        """What the finished split of ``source`` made, or None when it was not split in a committed part."""
        row = self._db.execute("SELECT records FROM splits WHERE source = ?", (source,)).fetchone()
        if row is None:
            return None
        return [_RECORD.validate_json(line) for line in row[0].split("\n") if line]

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class SplitLog:
    """Commits finished splits to ``splits/`` in parts (every ``every`` videos or ``every_s`` seconds)."""

    def __init__(self, store: Store, tag: str, every: int = 256, every_s: float = 10.0) -> None:
        self.store, self.tag, self.every, self.every_s = store, tag, every, every_s
        own = re.compile(rf"{re.escape(tag)}(\d{{6}})\.parquet")
        found = [int(m[1]) for name in store.listdir(SPLITS) if (m := own.fullmatch(name))]
        self._next = max(found, default=-1) + 1
        self._rows: list[dict[str, object]] = []
        self._last = time.monotonic()

    def add(self, source: str, records: Sequence[Clip | Failure]) -> None:
        self._rows.append({"source": source, "records": [r.model_dump_json() for r in records]})
        if len(self._rows) >= self.every or time.monotonic() - self._last >= self.every_s:
            self.commit()

    def commit(self) -> None:
        self._last = time.monotonic()
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=SPLITS_SCHEMA)
        with self.store.writing(SPLITS, f"{self.tag}{self._next:06d}.parquet") as f:
            pq.write_table(table, f)
        self._next += 1
        self._rows = []


def cleanup_splits(store: Store, tag: str) -> list[str]:
    """Remove what a killed driver left of its split parts (local partial files, unfinished uploads)."""
    return store.clear_partials(SPLITS, tag)
