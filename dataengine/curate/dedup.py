"""Exact and near-duplicate detection for clips: frame digests, 64-bit perceptual hashes, and the index the
runner keeps of the clips it kept.

Legend: ``frames_THWC`` is uint8 RGB (T, H, W, 3); ``gray_THW`` float luma; a *frame hash* is one 64-bit
pHash held as a Python int (or a ``uint64``); an *entry* is one frame hash of one kept clip.

    fp = Fingerprint(frames_digest(view.frames_THWC), phash_frames(view.frames_THWC, 4))
    index = DuplicateIndex(NearDupConfig())
    if (found := index.check(clip_id, fp)) is None:
        index.add(clip_id, fp)            # kept: later clips are compared with it
    else:
        kept_id, reason = found           # dropped before captioning

**Hashes**: ``dataengine.curate.hashes`` (exact digests, 64-bit pHashes; ``FLAT_HASH`` for flat frames).

**Decision.** A clip duplicates a kept clip K when (exact) its digest equals K's, or (near) K is *anchored*
(some frame hash of the clip lies within ``anchor_distance`` bits of some frame hash of K) and at least
``ceil(min_match_fraction x n)`` of the clip's n informative frame hashes each lie within ``max_distance``
bits of *some* frame hash of K, any position, so a clip cut from the same shot at another offset matches on
the frames the two share. Consecutive clips of one static shot are near duplicates by this rule and the later
ones are dropped: intended, they would teach a model the same picture twice. Among several qualifying K the
one with the most matched frames, then the smallest summed distance, then the earliest kept wins, so
decisions depend on the kept set and its order only, never on how the index is laid out (``from_rows`` after
a crash decides as the uninterrupted run did).

The anchor is the usual LSH trade, recall for speed: a near duplicate none of whose frames comes within
``anchor_distance`` (default 7) of the kept clip is missed, even when all its frames lie within
``max_distance`` (14). On the real copies one frame always comes that close: re-encode 0-2 bits, blur 0,
the 10% crop 4 (its other frames 10-12). Finding every pair within 14 bits instead takes radius 3 in each
16-bit band, 697 probes touching ~680k entries a check at 10^6 clips (9-16 checks/s); radius 1 takes 17
probes and ~16k entries. Hashes of real frames are at even distances, so anchor 6 and 7 find the same.

**Thresholds** (measured on ``tests/curation_cases.py``, caption view 2 fps x 8 frames, 112 px short side,
nearest distance of each of 4 hashes to the original's): re-encode at 0.75x and 60 kbit/s 0-2 bits, blur
0, 10% centre crop 4-12 (the hardest copy), burned-in captions 12-20, letterbox 18-26, other content 20-34.
Distances are always even (every non-flat hash has exactly 32 bits set), so ``max_distance=14`` sits one
step above the crop and two below the captions' third-nearest frame; 3 of 4 frames must match.

**Index.** Multi-index hashing for the anchor: each 64-bit hash is split into ``bands`` sub-keys of 64/bands
bits. If two hashes differ in at most a bits, by the pigeonhole principle some band differs in at most
floor(a/bands) bits, so probing every key within that radius of each query band (multi-probe) finds every
hash within ``anchor_distance``: exact, checked by popcount. The anchored clips' frames (contiguous entries:
entries are appended clip by clip) are then compared with the query's in full, so the layout changes speed,
never decisions. The default, 4 bands of 16 bits with radius 1 (17 probes a band), touches about
4 x 17 x N/65536 entries per query hash (N entries held), ~16k a check at 10^6 clips. ``_BandIndex`` holds,
per band, the entries sorted by band key in runs (LSM style: a tail of 4096 unsorted entries
becomes a run, runs merge when the newer one grows to a quarter of the older; the tail and runs under 16k
entries are scanned by popcount). A run with at least two entries per possible key keeps a table of where
each key's entries start instead of the sorted keys (no binary search, whose steps miss cache in a big run)
and, in the keys' place, each entry's next band key, which rules out ~3/4 of the candidates before their
full hashes are read at random. Memory is those arrays: 36 bytes per frame hash (8 hash, 4 owner, 4 x (4
entry + 2 key or next key)), 1 MiB of tables per big run, plus about 72 per clip (id, digest, two
lookups): ~216 bytes per clip of 4 hashes. ``bench/curation_index.py`` measures it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from dataengine.config import Config
from dataengine.curate.hashes import FLAT_HASH
from dataengine.records import Fingerprint

_MAX_PROBES_PER_BAND = 4096


# --- config ------------------------------------------------------------------------------------------------


class NearDupConfig(Config):
    """When the runner drops a clip as a duplicate of one it already kept."""

    enabled: bool = Field(True, description="False: no duplicate index, every clip goes on to captioning")
    exact: bool = Field(True, description="drop clips whose decoded frames equal a kept clip's (digest)")
    max_distance: int = Field(
        14, ge=0, le=32, description="Hamming bits within which two frame hashes show the same picture"
    )
    min_match_fraction: float = Field(
        0.75,
        gt=0,
        le=1,
        description="share of a clip's frame hashes that must match distinct frames of ONE kept clip",
    )
    anchor_distance: int = Field(
        7,
        ge=0,
        le=32,
        description="a kept clip is compared with a new one only when some frame hash of the new clip lies "
        "within anchor_distance bits of some frame hash of the kept clip (the index's candidate rule, "
        "<= max_distance): a near duplicate with no single frame within anchor_distance bits of the kept "
        "clip is missed",
    )
    bands: int = Field(
        4, ge=1, le=16, description="sub-keys per hash in the index; probe radius = anchor_distance // bands"
    )

    @model_validator(mode="after")
    def _probes_bounded(self) -> NearDupConfig:
        if self.anchor_distance > self.max_distance:
            raise ValueError(
                f"anchor_distance={self.anchor_distance} must be <= max_distance={self.max_distance}"
            )
        width = math.ceil(64 / self.bands)
        probes = sum(math.comb(width, i) for i in range(self.anchor_distance // self.bands + 1))
        if probes > _MAX_PROBES_PER_BAND:
            raise ValueError(
                f"anchor_distance={self.anchor_distance} with bands={self.bands} needs {probes} probes per "
                f"band (limit {_MAX_PROBES_PER_BAND}); use more bands or a smaller anchor_distance"
            )
        return self


# --- index -------------------------------------------------------------------------------------------------


class _Column:
    """An append-only numpy array with amortised doubling; ``S`` dtypes widen to the longest value."""

    def __init__(self, dtype: np.dtype | type | str) -> None:
        self._data = np.empty(16, dtype=dtype)  # a subarray dtype such as (uint64, 2) gives rows of 2
        self._n = 0

    def append(self, values: np.ndarray) -> None:
        wider = np.result_type(self._data.dtype, values.dtype)
        if wider != self._data.dtype:
            self._data = self._data.astype(wider)
        if self._n + len(values) > len(self._data):
            rows = max(2 * len(self._data), self._n + len(values))
            grown = np.empty((rows, *self._data.shape[1:]), dtype=self._data.dtype)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : self._n + len(values)] = values
        self._n += len(values)

    @property
    def values(self) -> np.ndarray:
        return self._data[: self._n]

    def nbytes(self) -> int:
        return self._data.nbytes


class _Runs:
    """Append-only multimap from integer keys to int32 values: sorted runs + an unsorted tail (LSM style)."""

    def __init__(self, key_dtype: type, tail_size: int = 2048) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        self._tail_keys: np.ndarray = np.empty(tail_size, dtype=key_dtype)
        self._tail_values = np.empty(tail_size, dtype=np.int32)
        self._tail_n = 0

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        n, room = len(keys), len(self._tail_keys) - self._tail_n
        if n <= room:
            self._tail_keys[self._tail_n : self._tail_n + n] = keys
            self._tail_values[self._tail_n : self._tail_n + n] = values
            self._tail_n += n
            return
        keys = np.concatenate([self._tail_keys[: self._tail_n], keys.astype(self._tail_keys.dtype)])
        values = np.concatenate([self._tail_values[: self._tail_n], values.astype(np.int32)])
        self._tail_n = 0
        self._runs.append(self._sorted(keys, values))
        while len(self._runs) > 1 and 4 * len(self._runs[-1][0]) >= len(self._runs[-2][0]):
            (k1, v1), (k2, v2) = self._runs.pop(-2), self._runs.pop()
            self._runs.append(self._sorted(np.concatenate([k1, k2]), np.concatenate([v1, v2])))

    def find(self, probes: np.ndarray) -> np.ndarray:
        """The values of every key equal to one of ``probes``, which must be sorted and unique."""
        probes = probes.astype(self._tail_keys.dtype)
        tail_keys = self._tail_keys[: self._tail_n]
        at = np.minimum(probes.searchsorted(tail_keys), len(probes) - 1)
        found = [self._tail_values[: self._tail_n][probes[at] == tail_keys]]
        for keys, values in self._runs:
            if len(keys) < 4 * len(probes):  # a small run: look its keys up among the probes instead
                at = np.minimum(probes.searchsorted(keys), len(probes) - 1)
                found.append(values[probes[at] == keys])
                continue
            lo, hi = keys.searchsorted(probes, "left"), keys.searchsorted(probes, "right")
            lengths = hi - lo
            total = int(lengths.sum())
            if total:
                starts = np.repeat(lo - np.cumsum(lengths) + lengths, lengths)
                found.append(values[starts + np.arange(total)])
        return _sorted_unique(np.concatenate(found))

    def nbytes(self) -> int:
        return (
            self._tail_keys.nbytes
            + self._tail_values.nbytes
            + sum(k.nbytes + v.nbytes for k, v in self._runs)
        )

    @staticmethod
    def _sorted(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(keys, kind="stable")
        return keys[order], values[order]


class _BandIndex:
    """Multi-index over the entry hashes (the ``_hashes`` column): per band, the entries sorted by band key in
    runs, each run covering a contiguous range of entries; the newest entries and any small runs are scanned
    by popcount instead (LSM style: a tail of ``tail`` unsorted entries becomes a run, and runs merge when the
    newer one grows to a quarter of the older). A run finds a key's entries with ``searchsorted`` on its
    sorted keys or, once it holds at least two entries per possible key, with a table of where each key's
    entries start (two reads a probe instead of a binary search, which misses cache at every step in a big
    run). Such a run keeps, instead of the keys, each entry's next band's key (``checks``): an entry whose
    band key is ``r`` bits from the query's and whose next band is more than ``distance - r`` bits from the
    query's cannot be within ``distance``, so ~3/4 of the random reads of full hashes are skipped."""

    tail = 4096  # entries left unsorted before they become a run
    scan = 16384  # runs smaller than this, and the tail, are compared with the query hash by hash

    def __init__(self, widths: Sequence[int], radius: int) -> None:
        shifts = [64 - sum(widths[: b + 1]) for b in range(len(widths))]
        self._shifts = np.array(shifts, dtype=np.uint64)[:, None]
        self._masks = np.array([(1 << w) - 1 for w in widths], dtype=np.uint64)[:, None]
        # Widths differ by at most one bit and never across a dtype boundary: one key dtype for all bands.
        # A narrower band also gets the probes of its top bit + 1, keys it cannot hold: never found.
        self._dtype = _key_dtype(max(widths))
        self._flips: np.ndarray = _flips(max(widths), radius).astype(self._dtype)
        # (start, stop, per band the sorted keys of entries start..stop or (bands, 2**width + 1) where each
        # key's entries start, (bands, stop - start) the entries in key order)
        self._runs: list[tuple[int, int, list[np.ndarray] | np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._sorted_upto = 0
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # by query length

    def add(self, hashes: np.ndarray) -> None:
        """Index the entries ``hashes`` (the whole column) gained since the last call."""
        if len(hashes) - self._sorted_upto < self.tail:
            return
        self._runs.append(self._run(hashes, self._sorted_upto, len(hashes)))
        self._sorted_upto = len(hashes)
        runs = self._runs
        while len(runs) > 1 and 4 * (runs[-1][1] - runs[-1][0]) >= runs[-2][1] - runs[-2][0]:
            start, stop = runs[-2][0], runs[-1][1]
            del runs[-2:]
            runs.append(self._run(hashes, start, stop))

    def near(self, query: np.ndarray, hashes: np.ndarray, distance: int) -> np.ndarray:
        """Entry numbers (unsorted, possibly repeated) of every hash within ``distance`` bits of one of
        ``query``, where ``distance // bands`` is at most the probe radius (pigeonhole: exact)."""
        runs, k = self._runs, len(self._runs)
        while k > 0 and runs[k - 1][1] - runs[k - 1][0] < self.scan:
            k -= 1
        scan_from = runs[k][0] if k < len(runs) else self._sorted_upto
        found = []
        if scan_from < len(hashes):
            close = np.bitwise_count(hashes[scan_from:, None] ^ query[None, :]) <= distance
            found.append(np.flatnonzero(close.any(axis=1)) + scan_from)
        if k:
            keys_BQ: np.ndarray = ((query[None, :] >> self._shifts) & self._masks).astype(self._dtype)
            probes_BP = (keys_BQ[:, :, None] ^ self._flips[None, None, :]).reshape(len(keys_BQ), -1)
            source, rows, flipped = self._probe_layout(len(query))
            expect = keys_BQ[(rows + 1) % len(keys_BQ), source]  # the next band's key, per probe
            slack = distance - flipped  # bits the rest of the hash may differ by, per probe
            for start, stop, keys, entries_BN, checks_BN in runs[:k]:
                if isinstance(keys, np.ndarray):  # key -> where its entries start
                    at = probes_BP.ravel() + rows * keys.shape[1]
                    lo = keys.ravel()[at].astype(np.int64)
                    lengths = keys.ravel()[at + 1] - lo
                else:
                    lo_BP, hi_BP = np.empty(probes_BP.shape, np.int64), np.empty(probes_BP.shape, np.int64)
                    for b in range(len(probes_BP)):
                        lo_BP[b] = keys[b].searchsorted(probes_BP[b], "left")
                        hi_BP[b] = keys[b].searchsorted(probes_BP[b], "right")
                    lo, lengths = lo_BP.ravel(), (hi_BP - lo_BP).ravel()
                total = int(lengths.sum())
                if not total:
                    continue
                lo += rows * (stop - start) - np.cumsum(lengths) + lengths  # into entries_BN
                at, of = np.repeat(lo, lengths) + np.arange(total), np.repeat(source, lengths)
                if checks_BN is not None:
                    check = checks_BN.ravel()[at] ^ np.repeat(expect, lengths)
                    keep = np.flatnonzero(np.bitwise_count(check) <= np.repeat(slack, lengths))
                    at, of = at[keep], of[keep]
                entry = entries_BN.ravel()[at]
                found.append(entry[np.bitwise_count(hashes[entry] ^ query[of]) <= distance])
        return np.concatenate(found) if found else np.empty(0, np.int32)

    def _probe_layout(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the (bands, n x flips) probes of ``n`` query hashes, raveled: each one's query hash, band and
        bits flipped."""
        if n not in self._layouts:
            flips, bands = len(self._flips), len(self._shifts)
            probe = np.arange(bands * n * flips)
            bits = np.bitwise_count(self._flips).astype(np.int64)[probe % flips]
            self._layouts[n] = probe // flips % n, probe // (n * flips), bits
        return self._layouts[n]

    def nbytes(self) -> int:
        total = 0
        for _, _, keys, entries, checks in self._runs:
            total += entries.nbytes + (checks.nbytes if checks is not None else 0)
            total += keys.nbytes if isinstance(keys, np.ndarray) else sum(k.nbytes for k in keys)
        return total

    def _run(
        self, hashes: np.ndarray, start: int, stop: int
    ) -> tuple[int, int, list[np.ndarray] | np.ndarray, np.ndarray, np.ndarray | None]:
        chunk, bands, keys_space = hashes[start:stop], len(self._shifts), int(self._masks.max()) + 1

        def band_keys(b: int) -> np.ndarray:
            return ((chunk >> self._shifts[b, 0]) & self._masks[b, 0]).astype(self._dtype)

        entries_BN = np.empty((bands, stop - start), dtype=np.int32)
        if 2 * keys_space > stop - start:
            sorted_keys = []
            for b in range(bands):
                keys = band_keys(b)
                order = np.argsort(keys, kind="stable")
                entries_BN[b] = order + start
                sorted_keys.append(keys[order])
            return start, stop, sorted_keys, entries_BN, None
        table = np.zeros((bands, keys_space + 1), np.int32)
        checks_BN: np.ndarray = np.empty((bands, stop - start), dtype=self._dtype)
        for b in range(bands):
            keys = band_keys(b)
            order = np.argsort(keys, kind="stable")
            entries_BN[b] = order + start
            table[b, 1:] = np.cumsum(np.bincount(keys, minlength=keys_space))
            checks_BN[b] = band_keys((b + 1) % bands)[order]
        return start, stop, table, entries_BN, checks_BN


def _key_dtype(bits: int) -> type:
    return np.uint16 if bits <= 16 else np.uint32 if bits <= 32 else np.uint64


def _digest_words(digests: Sequence[str]) -> np.ndarray:
    """(N, 2) uint64 from 32-hex-char digests (``frames_digest``)."""
    bad = [d for d in digests if len(d) != 32]
    if bad:
        raise ValueError(f"a frames digest is 32 hex characters (frames_digest); got {bad[0]!r}")
    return np.frombuffer(bytes.fromhex("".join(digests)), dtype=">u8").astype(np.uint64).reshape(-1, 2)


def _id_keys(clip_ids: Sequence[str]) -> np.ndarray:
    keys = [hashlib.blake2b(c.encode(), digest_size=8).digest() for c in clip_ids]
    return np.frombuffer(b"".join(keys), dtype=np.uint64)


class DuplicateIndex:
    """The kept clips' fingerprints, asked for each new clip whether it repeats one (module docstring).

    Args:
        config: thresholds and index layout.
    """

    def __init__(self, config: NearDupConfig | None = None) -> None:
        self.config = config or NearDupConfig()
        bands = self.config.bands
        widths = [64 // bands + (1 if b < 64 % bands else 0) for b in range(bands)]
        self._band_index = _BandIndex(widths, self.config.anchor_distance // bands)
        self._ids = _Column("S1")
        self._digests = _Column(np.dtype((np.uint64, 2)))
        self._by_digest, self._by_id = _Runs(np.uint64), _Runs(np.uint64)
        self._hashes = _Column(np.uint64)
        self._owners = _Column(np.int32)

    @classmethod
    def from_rows(cls, config: NearDupConfig | None, *columns: Sequence[Any]) -> DuplicateIndex:
        """An index of kept clips rebuilt in one go from manifest columns, in their order; decides exactly as
        adding them one by one would (a repeated clip id keeps its first row)."""
        (index := cls(config)).extend(*columns)
        return index

    def extend(
        self, clip_ids: Sequence[str], digests: Sequence[str], phashes: Sequence[Sequence[int]]
    ) -> None:
        """Add kept clips in bulk (one manifest part's columns, in order), as ``add`` one by one would, except
        that an id already held from an earlier call is not looked up (a run's manifest holds a clip once)."""
        if not len(clip_ids) == len(digests) == len(phashes):
            raise ValueError(f"columns differ in length: {len(clip_ids)}, {len(digests)}, {len(phashes)}")
        if not len(clip_ids):
            return
        ids = np.array([c.encode() for c in clip_ids], dtype=bytes)
        first = np.sort(np.unique(ids, return_index=True)[1])
        rows = [int(i) for i in first]
        self._append(ids[first], [digests[i] for i in rows], [phashes[i] for i in rows])

    def __len__(self) -> int:
        return len(self._ids.values)

    def nbytes(self) -> int:
        """Bytes of numpy memory the index holds (capacity included)."""
        columns = (self._ids, self._digests, self._hashes, self._owners)
        runs = (self._band_index, self._by_digest, self._by_id)
        return sum(c.nbytes() for c in columns) + sum(r.nbytes() for r in runs)

    def add(self, clip_id: str, fp: Fingerprint) -> None:
        """Record a kept clip; a clip id already held is left as it is (resume re-sends in-flight clips)."""
        if self._lookup_id(clip_id) is None:
            self._append(np.array([clip_id.encode()]), [fp.digest], [fp.phash])

    def check(self, clip_id: str, fp: Fingerprint) -> tuple[str, str] | None:
        """``(kept clip id, reason)`` when ``fp`` repeats a kept clip other than ``clip_id``, else None."""
        if not self.config.enabled or len(self) == 0:
            return None
        if self.config.exact and (hit := self._exact(clip_id, fp.digest)) is not None:
            return hit
        return self._near(clip_id, fp.phash)

    # --- internals ---

    def _append(self, ids: np.ndarray, digests: Sequence[str], phashes: Sequence[Sequence[int]]) -> None:
        start = len(self)
        clips = np.arange(start, start + len(ids), dtype=np.int32)
        words = _digest_words(digests)
        self._ids.append(ids)
        self._digests.append(words)
        self._by_digest.add(words[:, 0], clips)
        self._by_id.add(_id_keys([i.decode() for i in ids]), clips)
        counts = [len(p) for p in phashes]
        hashes = np.fromiter(itertools.chain.from_iterable(phashes), dtype=np.uint64, count=sum(counts))
        owners = np.repeat(clips, counts)
        informative = hashes != FLAT_HASH
        hashes, owners = hashes[informative], owners[informative]
        self._hashes.append(hashes)
        self._owners.append(owners)
        self._band_index.add(self._hashes.values)

    def _lookup_id(self, clip_id: str) -> int | None:
        held = self._by_id.find(_id_keys([clip_id]))
        matches = held[self._ids.values[held] == clip_id.encode()]
        return int(matches.min()) if len(matches) else None

    def _exact(self, clip_id: str, digest: str) -> tuple[str, str] | None:
        words = _digest_words([digest])
        held = np.sort(self._by_digest.find(words[:, 0]))
        for clip in held:
            kept = self._ids.values[clip].decode()
            if kept != clip_id and self._digests.values[clip][1] == words[0, 1]:
                return kept, f"exact duplicate of {kept}: same decoded frames (digest {digest[:12]}...)"
        return None

    def _near(self, clip_id: str, phash: Sequence[int]) -> tuple[str, str] | None:
        query = np.array([h for h in phash if h != FLAT_HASH], dtype=np.uint64)
        if len(query) == 0:
            return None
        d = self.config.max_distance
        need = max(1, math.ceil(self.config.min_match_fraction * len(query) - 1e-9))
        hashes, owners = self._hashes.values, self._owners.values
        anchored = self._band_index.near(query, hashes, self.config.anchor_distance)
        if len(anchored) == 0:
            return None
        clips = _sorted_unique(owners[anchored])
        clips = clips[self._ids.values[clips] != clip_id.encode()]
        if len(clips) == 0:
            return None
        # Every entry of the candidate clips, clip after clip (a clip's entries are contiguous).
        lo, hi = owners.searchsorted(clips, "left"), owners.searchsorted(clips, "right")
        starts = np.cumsum(hi - lo) - (hi - lo)
        entries = np.repeat(lo - starts, hi - lo) + np.arange(int((hi - lo).sum()))
        dist_EQ = np.bitwise_count(hashes[entries][:, None] ^ query[None, :]).astype(np.int64)
        within_EQ = dist_EQ <= d
        within_CQ = np.logical_or.reduceat(within_EQ, starts, axis=0)  # query frames matched, per clip
        kept_frames = np.add.reduceat(
            within_EQ.any(axis=1).astype(np.int64), starts
        )  # kept frames matched, per clip
        matched = np.minimum(within_CQ.sum(axis=1), kept_frames)
        closest_CQ = np.where(within_CQ, np.minimum.reduceat(np.where(within_EQ, dist_EQ, 64), starts), 0)
        summed, worst = closest_CQ.sum(axis=1), closest_CQ.max(axis=1)
        best = np.lexsort((clips, summed, -matched))[0]
        if matched[best] < need:
            return None
        kept = self._ids.values[clips[best]].decode()
        return kept, (
            f"near duplicate of {kept}: {matched[best]} of {len(query)} frame hashes within {worst[best]} "
            f"bits (dedup.max_distance={d}, needs {need})"
        )


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` for small integer arrays, several times faster (numpy 2.3 hashes before sorting)."""
    values = np.sort(values)
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


@lru_cache(maxsize=32)
def _flips(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit mask with at most ``radius`` bits set, as uint64 (multi-probe offsets)."""
    masks = [
        sum(1 << b for b in bits)
        for r in range(radius + 1)
        for bits in itertools.combinations(range(width), r)
    ]
    return np.array(masks, dtype=np.uint64)
