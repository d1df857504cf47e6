"""Perceptual hashes of decoded pictures, as 64-bit integers, and their similarity.

Three hashes of 8x8 = 64 bits each, with imagehash's definitions (the POC's library):
- ahash: the picture squashed to 8x8 grey; a bit is set where a pixel is above the mean;
- dhash: squashed to 9x8; a bit is set where a pixel is brighter than its left neighbour
  (imagehash's `dhash`, horizontal differences);
- phash: squashed to 32x32; 2-D DCT-II; a bit is set where a coefficient of the top-left
  8x8 (lowest frequencies, DC included) is above their median.

They are computed in NumPy from ONE small grey copy per picture (`grey_copy`, GREY_SIDE
square, made by Pillow from the working copy) and for a whole batch at once
(`hashes_of_greys`): each squash is a Lanczos-3 resampling matrix like Pillow's (the
filter imagehash asks for), so a batch costs three small matrix products; levels are
rounded to integers after each pass, as Pillow does for imagehash, which compares 8-bit
pixels (a flat backdrop gives ties, hence cleared bits, not noise). Values differ from
imagehash's by a fraction of a bit per hash on average (0.1 / 0.3 / 0.1 on real
photos; resampling from the small copy); the
signature version (npimage.schemas.SIGNATURE_VERSION) names this definition.

The hashes are packed into signed int64 (row-major, first bit highest: the bits of the
unsigned hash reinterpreted) so that arrays of them are plain NumPy columns: similarity
of whole arrays is then an XOR and a popcount, vectorised.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

HASH_BITS = 64
#: Side of the grey copy the three hashes are computed from (pixels, square).
GREY_SIDE = 64
#: Side of the picture the DCT of phash is taken of (imagehash: hash size x 4).
DCT_SIDE = 32
HASH_SIDE = 8


def _lanczos(x: np.ndarray, a: float = 3.0) -> np.ndarray:
    """Lanczos kernel of `a` lobes."""
    return np.where(np.abs(x) < a, np.sinc(x) * np.sinc(x / a), 0.0)


@cache
def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64: Lanczos-3 resampling of a line of n_in pixels to n_out, like
    Pillow's (pixel centres aligned, support widened by the reduction factor, weights
    normalised to sum 1)."""
    scale = n_in / n_out
    support = 3.0 * max(scale, 1.0)
    centre = (np.arange(n_out) + 0.5) * scale
    pos = np.arange(n_in) + 0.5
    w = _lanczos((pos[None, :] - centre[:, None]) / max(scale, 1.0))
    w[np.abs(pos[None, :] - centre[:, None]) > support] = 0.0
    out: np.ndarray = w / w.sum(axis=1, keepdims=True)
    return out


@cache
def _dct_rows() -> np.ndarray:
    """(HASH_SIDE, DCT_SIDE): the first DCT-II basis rows (scipy's unnormalised type II,
    scale dropped: only the order of the coefficients matters)."""
    k = np.arange(HASH_SIDE)[:, None]
    n = np.arange(DCT_SIDE)[None, :]
    return np.cos(np.pi * k * (2 * n + 1) / (2 * DCT_SIDE))


def grey_copy(rgb: Image.Image) -> np.ndarray:
    """(GREY_SIDE, GREY_SIDE) uint8: the picture in grey, squashed to a square.

    Converted first (as imagehash does), then resized with Pillow's BILINEAR (a triangle
    widened by the reduction: no aliasing); a quarter of a millisecond for a 348-pixel
    photo. Resizing first then converting is a little cheaper but moves dhash by a bit
    more (a 1-bit dithered copy then falls out of `same`).
    """
    return np.asarray(rgb.convert("L").resize((GREY_SIDE, GREY_SIDE),
                                              Image.Resampling.BILINEAR))


def _squash(greys: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(n, rows, cols) float64 levels, rounded like 8-bit pixels after each pass (Pillow
    resizes horizontally, then vertically, rounding to 8 bits in between)."""
    side = greys.shape[1]
    wide = np.clip(np.rint(greys @ resample_matrix(side, cols).T), 0, 255)
    out: np.ndarray = resample_matrix(side, rows) @ wide
    return np.clip(np.rint(out), 0, 255, out=out)


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """(n, 8, 8) bools -> (n,) int64, row-major, first bit highest."""
    packed = np.packbits(bits.reshape(len(bits), HASH_BITS), axis=1)
    return packed.view(">i8")[:, 0].astype(np.int64)


def hashes_of_greys(greys: np.ndarray) -> np.ndarray:
    """(n, 3) int64: (ahash, dhash, phash) of each (n, S, S) uint8 grey copy."""
    g = np.asarray(greys, dtype=np.float64)
    if g.ndim != 3 or len(g) == 0:
        return np.zeros((len(g), 3), np.int64)
    a = _squash(g, HASH_SIDE, HASH_SIDE)
    ahash = a > a.mean(axis=(1, 2), keepdims=True)
    d = _squash(g, HASH_SIDE, HASH_SIDE + 1)
    dhash = d[:, :, 1:] > d[:, :, :-1]
    c = _dct_rows()
    # rounded: the cosines' float noise (1e-13 where a flat area gives exact zeros) must
    # not set bits above a zero median
    low = np.round(c @ _squash(g, DCT_SIDE, DCT_SIDE) @ c.T, 6)
    phash = low > np.median(low.reshape(len(g), -1), axis=1)[:, None, None]
    return np.stack([_pack_bits(ahash), _pack_bits(dhash), _pack_bits(phash)], axis=1)


def image_hashes(rgb: Image.Image) -> tuple[int, int, int]:
    """(ahash, dhash, phash) of one normalised RGB picture (see `hashes_of_greys`)."""
    ah, dh, ph = hashes_of_greys(grey_copy(rgb)[None])[0]
    return int(ah), int(dh), int(ph)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of int64/uint64 arrays (broadcasting), as uint8."""
    return np.bitwise_count(np.bitwise_xor(a.view(np.uint64), b.view(np.uint64)))


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - hamming/64: the POC's dah/ddh score, for arrays of hashes (broadcasting)."""
    return 1.0 - hamming(a, b).astype(np.float32) / HASH_BITS
