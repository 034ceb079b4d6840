from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from dataengine.curate import dedup
from dataengine.curate.dedup import DuplicateIndex, NearDupConfig
from dataengine.curate.hashes import FLAT_HASH, frames_digest, phash_frames
from dataengine.records import Fingerprint
from dataengine.stages import ViewConfig
from tests.curation_cases import decode_span
from tests.media import ffmpeg

CAPTION_VIEW = ViewConfig(fps=2, max_frames=8, resize="short_side", size=112)


def random_frames(seed: int, t: int = 8, h: int = 112, w: int = 160) -> np.ndarray:
    """Smooth random pictures (low-frequency structure, as real frames have), uint8 (T, H, W, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(t, h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    big = coarse.repeat(16, axis=1).repeat(16, axis=2)[:, :h, :w]
    return big.astype(np.uint8)


def fingerprint(frames_THWC: np.ndarray, n: int = 4) -> Fingerprint:
    return Fingerprint(frames_digest(frames_THWC), phash_frames(frames_THWC, n))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def frame_distances(query: Fingerprint, kept: Fingerprint) -> list[int]:
    """For each frame hash of ``query``, the distance to the nearest frame hash of ``kept``."""
    return [min(hamming(q, k) for k in kept.phash) for q in query.phash]


# --- hashes ---


def test_phash_gives_n_evenly_spaced_64_bit_hashes() -> None:
    frames = random_frames(0, t=8)
    hashes = phash_frames(frames, 4)
    assert len(hashes) == 4 and all(isinstance(h, int) and 0 < h < 2**64 for h in hashes)
    assert hashes == phash_frames(frames[[0, 2, 5, 7]], 4)  # linspace(0, 7, 4).round() = 0, 2, 5, 7
    assert len(phash_frames(frames[:2], 4)) == 2
    assert len(set(hashes)) == 4  # different pictures, different hashes
    # 31 of the 63 AC coefficients lie above their median, plus the DC bit.
    assert all(h.bit_count() == 32 for h in hashes)


def test_phash_ignores_brightness_and_small_noise_but_not_content() -> None:
    frames = random_frames(1, t=1)
    brighter = np.clip(frames.astype(int) + 20, 0, 255).astype(np.uint8)
    noisy = np.clip(frames + np.random.default_rng(0).normal(0, 8, frames.shape), 0, 255).astype(np.uint8)
    (h,), (hb,), (hn,), (other,) = (phash_frames(f) for f in (frames, brighter, noisy, random_frames(2, t=1)))
    assert hamming(h, hb) <= 4 and hamming(h, hn) <= 4
    assert hamming(h, other) > 16


def test_flat_frames_hash_to_the_flat_sentinel() -> None:
    black = np.zeros((3, 64, 96, 3), np.uint8)
    grey = np.full((1, 64, 96, 3), 128, np.uint8)
    assert phash_frames(black) == (FLAT_HASH,) * 3 and phash_frames(grey) == (FLAT_HASH,)


def test_digest_names_the_exact_frames_and_their_shape() -> None:
    frames = random_frames(3)
    assert frames_digest(frames) == frames_digest(frames.copy())
    assert len(frames_digest(frames)) == 32
    changed = frames.copy()
    changed[0, 0, 0, 0] ^= 1
    assert frames_digest(changed) != frames_digest(frames)
    assert frames_digest(frames.reshape(4, 224, 160, 3)) != frames_digest(frames)
    with pytest.raises(ValueError, match="uint8"):
        frames_digest(frames.astype(np.float32))


# --- index decisions ---


def test_exact_duplicate_different_picture_and_self() -> None:
    index = DuplicateIndex(NearDupConfig())
    a = fingerprint(random_frames(10))
    index.add("a", a)
    found = index.check("b", fingerprint(random_frames(10)))
    assert found is not None and found[0] == "a" and found[1].startswith("exact duplicate of a")
    assert index.check("c", fingerprint(random_frames(11))) is None
    assert index.check("a", a) is None  # a clip never duplicates itself (resume re-sends in-flight clips)
    index.add("a", a)
    assert len(index) == 1  # adding a held clip id again changes nothing


def test_near_duplicate_needs_enough_frames_within_the_distance() -> None:
    config = NearDupConfig(max_distance=6, anchor_distance=6, min_match_fraction=0.75, exact=False)
    kept = (0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210, 0x0F0F_0F0F_F0F0_F0F0, 0x3333_CCCC_5555_AAAA)
    index = DuplicateIndex(config)
    index.add("kept", Fingerprint("0" * 32, kept))

    def flip(h: int, bits: int) -> int:
        return h ^ ((1 << bits) - 1) << 20  # ``bits`` adjacent bits, all in one band: the hardest case

    close = Fingerprint("1" * 32, (*(flip(h, 6) for h in kept[:3]), 0x5A5A_5A5A_5A5A_5A5A))
    found = index.check("q", close)
    assert found == ("kept", "near duplicate of kept: 3 of 4 frame hashes within 6 "
                             "bits (dedup.max_distance=6, needs 3)")  # fmt: skip
    too_far = Fingerprint("1" * 32, (*(flip(h, 7) for h in kept[:3]), 0x5A5A_5A5A_5A5A_5A5A))
    assert index.check("q", too_far) is None
    too_few = Fingerprint("1" * 32, (kept[0], kept[1], 0x5A5A_5A5A_5A5A_5A5A, 0xA5A5_A5A5_A5A5_A5A5))
    assert index.check("q", too_few) is None
    # Frames match in any order: a clip cut at another offset shares frames at other positions.
    assert index.check("q", Fingerprint("1" * 32, (kept[3], kept[2], kept[1], 0))) is not None


def test_disabled_index_finds_nothing_and_bad_configs_are_refused() -> None:
    index = DuplicateIndex(NearDupConfig(enabled=False))
    fp = fingerprint(random_frames(4))
    index.add("a", fp)
    assert index.check("b", fp) is None
    with pytest.raises(ValidationError, match="probes per band"):
        NearDupConfig(max_distance=16, bands=2)  # anchor 7: radius 3 in 32-bit bands, 5489 probes
    with pytest.raises(ValidationError, match="probes per band"):
        NearDupConfig(bands=1)
    with pytest.raises(ValidationError, match="anchor_distance=7 must be <= max_distance=6"):
        NearDupConfig(max_distance=6)
    with pytest.raises(ValidationError):
        NearDupConfig(max_distanse=3)  # type: ignore[call-arg]


def planted_stream(n: int, seed: int = 0) -> list[tuple[str, Fingerprint]]:
    """``n`` clips of 4 random hashes; a third of them near or exact copies of an earlier clip."""
    rng = np.random.default_rng(seed)
    stream: list[tuple[str, Fingerprint]] = []
    for i in range(n):
        if i > 10 and rng.random() < 0.3:
            _, source = stream[int(rng.integers(0, i))]
            if rng.random() < 0.2:
                stream.append((f"c{i}", source))
                continue
            flips = [
                sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, 14)), replace=False))
                for _ in range(4)
            ]
            phash = tuple(h ^ f for h, f in zip(source.phash, flips, strict=True))
        else:
            phash = tuple(int(h) | 1 for h in rng.integers(0, 2**64, size=4, dtype=np.uint64))
        stream.append((f"c{i}", Fingerprint(rng.bytes(16).hex(), phash)))
    return stream


def run(index: DuplicateIndex, stream: list[tuple[str, Fingerprint]]) -> list[tuple[str, str] | None]:
    decisions = []
    for clip_id, fp in stream:
        decisions.append(found := index.check(clip_id, fp))
        if found is None:
            index.add(clip_id, fp)
    return decisions


def brute_force(stream: list[tuple[str, Fingerprint]], config: NearDupConfig) -> list[str | None]:
    """The decision rule without an index: every kept clip's hashes compared with every query hash; a kept
    clip counts only when one of its hashes lies within ``anchor_distance`` of one of the query's."""
    kept_ids: list[str] = []
    kept_digests: list[str] = []
    kept_KF = np.zeros((0, 4), np.uint64)
    out: list[str | None] = []
    for clip_id, fp in stream:
        found = kept_ids[kept_digests.index(fp.digest)] if fp.digest in kept_digests else None
        if found is None:
            close_KQF = np.bitwise_count(kept_KF[:, None, :] ^ np.array(fp.phash, np.uint64)[None, :, None])
            within = close_KQF <= config.max_distance
            anchored = (close_KQF <= config.anchor_distance).any(axis=(1, 2))
            matched = np.minimum(within.any(axis=2).sum(axis=1), within.any(axis=1).sum(axis=1)) * anchored
            summed = np.where(within.any(axis=2), close_KQF.min(axis=2), 0).sum(axis=1)
            need = np.ceil(config.min_match_fraction * len(fp.phash))
            ok = np.nonzero(matched >= need)[0]
            if len(ok):
                found = kept_ids[ok[np.lexsort((ok, summed[ok], -matched[ok]))[0]]]
        out.append(found)
        if found is None:
            kept_ids.append(clip_id)
            kept_digests.append(fp.digest)
            kept_KF = np.concatenate([kept_KF, np.array([fp.phash], np.uint64)])
    return out


@pytest.fixture(params=["default", "small"])
def run_sizes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The index's own sizes, or runs small enough that 3000 clips go through many sorted runs and merges
    (searched by probes) besides the scanned tail."""
    if request.param == "small":
        monkeypatch.setattr(dedup._BandIndex, "tail", 64)
        monkeypatch.setattr(dedup._BandIndex, "scan", 200)


@pytest.mark.parametrize(("bands", "anchor"), [(3, 7), (4, 7), (8, 7), (10, 7), (4, 3), (2, 5)])
def test_index_decides_as_brute_force_across_runs_and_merges(
    bands: int, anchor: int, run_sizes: None
) -> None:
    config = NearDupConfig(max_distance=9, anchor_distance=anchor, bands=bands)
    stream = planted_stream(3000)
    decisions = run(DuplicateIndex(config), stream)
    assert [d[0] if d else None for d in decisions] == brute_force(stream, config)
    assert 300 < sum(d is not None for d in decisions) < 1000  # the planted copies, not all, not none


def test_a_near_duplicate_needs_one_frame_within_the_anchor_distance() -> None:
    """Every frame 8-14 bits from the kept clip's (within max_distance=14, none within anchor_distance=7):
    missed by design. One frame 4 bits away, as the real crop has ([10, 12, 12, 4]), anchors it."""
    config = NearDupConfig(exact=False)
    assert (config.anchor_distance, config.max_distance) == (7, 14)
    rng = np.random.default_rng(5)
    kept = tuple(int(h) | 1 for h in rng.integers(0, 2**64, size=4, dtype=np.uint64))

    def flip(h: int, bits: int) -> int:
        return h ^ sum(1 << int(b) for b in rng.choice(64, bits, replace=False))

    index = DuplicateIndex(config)
    index.add("kept", Fingerprint("0" * 32, kept))
    far = Fingerprint("1" * 32, tuple(flip(h, b) for h, b in zip(kept, (8, 10, 12, 14), strict=True)))
    assert sorted(frame_distances(far, Fingerprint("0" * 32, kept))) == [8, 10, 12, 14]
    assert index.check("far", far) is None
    assert brute_force([("kept", Fingerprint("0" * 32, kept)), ("far", far)], config) == [None, None]
    full_rule = config.model_copy(update={"anchor_distance": 14, "bands": 8})
    assert brute_force([("kept", Fingerprint("0" * 32, kept)), ("far", far)], full_rule) == [None, "kept"]
    cropped = Fingerprint("1" * 32, tuple(flip(h, b) for h, b in zip(kept, (10, 12, 12, 4), strict=True)))
    found = index.check("cropped", cropped)
    assert found is not None and found[0] == "kept"


def test_from_rows_and_resume_decide_as_one_uninterrupted_pass(run_sizes: None) -> None:
    config = NearDupConfig(max_distance=9)
    stream = planted_stream(6000, seed=1)
    index = DuplicateIndex(config)
    decisions = run(index, stream)
    kept = [(c, fp) for (c, fp), d in zip(stream, decisions, strict=True) if d is None]
    rebuilt = DuplicateIndex.from_rows(config, [c for c, _ in kept], [fp.digest for _, fp in kept],
                                       [list(fp.phash) for _, fp in kept])  # fmt: skip
    assert len(rebuilt) == len(index)
    probes = planted_stream(500, seed=2) + stream[::7]
    assert [index.check(c, fp) for c, fp in probes] == [rebuilt.check(c, fp) for c, fp in probes]

    # Crash half way: rebuild from the kept rows of the first half, then carry on; the clips in flight at the
    # crash (the last few of the first half) are re-sent and must be decided as before.
    half = len(stream) // 2
    first = [(c, fp) for (c, fp), d in zip(stream[:half], decisions, strict=False) if d is None]
    resumed = DuplicateIndex.from_rows(config, [c for c, _ in first], [fp.digest for _, fp in first],
                                       [fp.phash for _, fp in first])  # fmt: skip
    in_flight = stream[half - 20 : half]
    assert run(resumed, in_flight) == [None if d is None else d for d in decisions[half - 20 : half]]
    assert run(resumed, stream[half:]) == decisions[half:]
    assert len(resumed) == len(index) and resumed.nbytes() > 0


# --- real clips ---


def decode_caption_view(path: Path, n: int = 4, start_s: float = 0.0, end_s: float = 4.0) -> Fingerprint:
    return fingerprint(decode_span(path, start_s=start_s, end_s=end_s).views["caption"].frames_THWC, n)


X264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]


@pytest.fixture(scope="module")
def cases(curation_cases: dict[str, Path]) -> dict[str, Fingerprint]:
    return {name: decode_caption_view(path) for name, path in curation_cases.items() if path.suffix == ".mp4"}


def test_real_copies_are_near_duplicates_with_margins(cases: dict[str, Fingerprint]) -> None:
    config = NearDupConfig()
    d = config.max_distance
    distances = {name: frame_distances(fp, cases["moving"]) for name, fp in cases.items()}
    print("\nnearest frame hash distances to 'moving':", distances)
    index = DuplicateIndex(config)
    index.add("moving", cases["moving"])
    decisions = {name: index.check(name, fp) for name, fp in cases.items()}
    print({name: found[1] if found else None for name, found in decisions.items()})
    for name in ("reencoded", "cropped", "blurry"):
        found = decisions[name]
        assert found is not None and found[0] == "moving", (name, distances[name])
        assert sorted(distances[name])[2] <= d - 2, (name, distances[name])  # 3 of 4 frames with a margin
    for name in ("different", "letterbox"):
        assert decisions[name] is None, (name, distances[name])
        assert sorted(distances[name])[2] >= d + 6, (name, distances[name])  # far above the threshold
    # ``static`` holds moving's first frame: all its frames match that one frame, but one frame of
    # ``moving`` is not 3 of its 4; a frozen clip is the frozen filter's business.
    assert decisions["static"] is None and max(distances["static"]) == 0
    assert decisions["black"] is None  # flat frames carry no evidence
    assert decisions["moving"] is None  # itself


def test_the_same_shot_inside_two_uploads(tmp_path: Path, curation_cases: dict[str, Path]) -> None:
    """Two uploads of one camera pan (~0.18 short sides per second), 1 s apart: clip A is seconds 0-4 of the
    shot, clip B seconds 1-5. Their caption views (2 fps, 8 frames) share 6 frames. With 4 hashes per clip
    (at 0, 1, 2.5 and 3.5 s of each clip) B's hashes at 1 and 3.5 s of the shot meet A's, the one at 2 s
    lies 0.5 s (~20 bits) from A's nearest and the one at 4.5 s is new: 2 of 4, below 3 of 4, so B is kept.
    Hashing all 8 frames (the filter's ``phash_frames=8``) finds the 6 shared frames: 6 of 8, a duplicate."""
    paths = curation_cases
    pan = tmp_path / "pan.mp4"
    ffmpeg("-loop", "1", "-i", str(paths["still"]), "-vf", "scale=640:480,crop=320:240:t*40:t*20",
           "-t", "6", "-r", "20", *X264, str(pan))  # fmt: skip
    uploads = [tmp_path / "upload_a.mp4", tmp_path / "upload_b.mp4"]
    for start, upload in zip(("0", "1"), uploads, strict=True):
        ffmpeg("-ss", start, "-i", str(pan), "-t", "5", *X264, str(upload))
    for n, expect in ((4, None), (8, "a")):
        a, b = (decode_caption_view(upload, n) for upload in uploads)
        distances = frame_distances(b, a)
        print(f"\n{n} hashes: nearest frame hash distances, B to A:", distances)
        index = DuplicateIndex(NearDupConfig())
        index.add("a", a)
        found = index.check("b", b)
        assert (found[0] if found else None) == expect, distances
        shared = sum(d <= 2 for d in distances)
        assert shared == {4: 2, 8: 6}[n], distances  # the frames both clips hold, found as equal
