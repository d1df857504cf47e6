"""Perceptual hashes of a decoded picture, as 64-bit integers, and their similarity.

The hashes come from imagehash (average, difference and DCT-based perceptual hash,
8x8 = 64 bits each). They are packed into signed int64 so that arrays of them are plain
NumPy columns: similarity of whole arrays is then an XOR and a popcount, vectorised.
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

HASH_BITS = 64


def _pack(h: imagehash.ImageHash) -> int:
    """The 64 bits of an imagehash as a signed int64 (row-major, first bit highest)."""
    return int(np.packbits(h.hash.ravel()).view(">i8")[0])


def image_hashes(rgb: Image.Image) -> tuple[int, int, int]:
    """(ahash, dhash, phash) of a normalised RGB picture; all three share one grey copy."""
    grey = rgb.convert("L")
    return (
        _pack(imagehash.average_hash(grey)),
        _pack(imagehash.dhash(grey)),
        _pack(imagehash.phash(grey)),
    )


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of int64/uint64 arrays (broadcasting), as uint8."""
    return np.bitwise_count(np.bitwise_xor(a.view(np.uint64), b.view(np.uint64)))


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - hamming/64: the POC's dah/ddh score, for arrays of hashes (broadcasting)."""
    return 1.0 - hamming(a, b).astype(np.float32) / HASH_BITS
