"""Clip fingerprints: an exact digest of the decoded frames and 64-bit perceptual hashes of a few of them.

Legend: ``frames_THWC`` is uint8 RGB (T, H, W, 3); ``gray_THW`` float luma. ``dataengine.curate.dedup`` keeps
the index the runner asks with them.

**Hash.** Classic pHash on the whole frame: BT.601 luma, box-filter resize to 32x32, orthonormal 2-D DCT-II,
the top-left 8x8 coefficients, each bit = coefficient > the median of the 63 AC ones (bit 63 is the DC term,
row-major, as imagehash prints it). Resize and the 8 needed DCT rows fold into two small matrices, so a frame
costs two matrix products. The whole frame is hashed rather than a central region: a 10% centre crop shown at
the same size is a 1.11x zoom whichever region is hashed (the central region of the crop is a zoom of the
original's, too), and the whole frame keeps the most picture; ``tests/dataengine/curate/test_dedup.py``
measures both crop and re-encode distances on real decoded clips. A flat frame (no low-frequency structure:
black, blank, one colour) gets hash 0, which no real picture can have (31 AC bits are always set); flat
frames are neither indexed nor counted, since every flat frame would otherwise match every other.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache

import numpy as np

FLAT_HASH = 0  # the hash of a frame with no low-frequency structure; never indexed, never counted
_SIDE, _LOW = 32, 8


def frames_digest(frames_THWC: np.ndarray) -> str:
    """blake2b (16 bytes) of the shape and the bytes: equal only for the very same decoded frames.

    Raises:
        ValueError: ``frames_THWC`` is not uint8 (T, H, W, 3).
    """
    _check_frames(frames_THWC)
    digest = hashlib.blake2b(digest_size=16)
    digest.update("x".join(map(str, frames_THWC.shape)).encode())
    digest.update(np.ascontiguousarray(frames_THWC).data)
    return digest.hexdigest()


def phash_frames(frames_THWC: np.ndarray, n: int = 4) -> tuple[int, ...]:
    """64-bit pHashes of ``n`` evenly spaced frames, first and last included (all frames when fewer).

    Returns:
        one int in [0, 2**64) per hashed frame, in time order; ``FLAT_HASH`` (0) for a flat frame.
    Raises:
        ValueError: ``frames_THWC`` is not uint8 (T, H, W, 3), or ``n < 1``.
    """
    _check_frames(frames_THWC)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    t, h, w, _ = frames_THWC.shape
    if t == 0:
        return ()
    picks = np.linspace(0, t - 1, num=min(n, t)).round().astype(int)
    rgb = frames_THWC[picks].astype(np.float32)
    gray_THW = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    rows, cols = _projection(h), _projection(w)
    low_T88 = rows @ gray_THW @ cols.T  # the top-left 8x8 of the DCT of the 32x32 resized frame
    coeffs = low_T88.reshape(len(picks), _LOW * _LOW)
    ac = coeffs[:, 1:]
    bits = coeffs > np.median(ac, axis=1, keepdims=True)
    words = np.packbits(bits, axis=1).view(">u8")[:, 0]
    flat = np.abs(ac).max(axis=1) < 1.0
    return tuple(0 if f else int(x) for x, f in zip(words, flat, strict=True))


def _check_frames(frames_THWC: np.ndarray) -> None:
    if frames_THWC.dtype != np.uint8 or frames_THWC.ndim != 4 or frames_THWC.shape[3] != 3:
        raise ValueError(f"frames_THWC must be uint8 (T,H,W,3); got {frames_THWC.dtype} {frames_THWC.shape}")


@lru_cache(maxsize=64)
def _projection(size: int) -> np.ndarray:
    """(8, size) float32: box-filter resize of ``size`` pixels to 32, then the first 8 DCT-II rows."""
    edges = np.arange(_SIDE + 1) * (size / _SIDE)
    pixel = np.arange(size)[None, :]
    overlap = np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel)
    resize = np.clip(overlap, 0, None) / (size / _SIDE)
    u, x = np.arange(_LOW)[:, None], np.arange(_SIDE)[None, :]
    dct = np.cos(np.pi * (2 * x + 1) * u / (2 * _SIDE)) * math.sqrt(2 / _SIDE)
    dct[0] /= math.sqrt(2)
    return (dct @ resize).astype(np.float32)
