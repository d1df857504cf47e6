"""Compiled kernels of the visual check (npimage.matching.verify): the grey residual.

Why: the residual of a pair (pick the blur combination with the least mean difference,
difference map, one-pixel-tolerant map, 2 x 2 window means, peaks) was a dozen NumPy
passes over stacks of 512 thumbnails, each making a 32 MB temporary: memory traffic, not
arithmetic, and it ran three times per aligned pair (identity, coarse and fine
alignment). Here it is one pass per pair over 64 KB thumbnails that stay in cache, without
temporaries, and without the GIL (`nogil`: two threads really run side by side).

The maps and peaks are the same float32 operations in the same order as the NumPy code
they replace (bit-identical); only the per-combination mean that picks the blurs is summed
in float64 (NumPy sums float32 pairwise), which can only matter between two combinations
equal to ~1e-7.

Compiled code is cached on disk (cache=True), like npimage.matching.kernels.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Blur combinations tried, as indices into the blurred stacks (0: BLUR, 1 and 2:
#: BLUR_EQUALISE on one side), in the order the first best is kept.
COMBOS = np.array([(0, 0), (1, 0), (0, 1), (2, 0), (0, 2)], np.int64)


@njit(nogil=True, cache=True)
def _box_max(d: np.ndarray, out: np.ndarray) -> np.float32:
    """2 x 2 window means of map d (S, S) into out (S-1, S-1), in verify._box's order of
    adds; their highest value."""
    h, w = out.shape
    best = np.float32(-np.inf)
    four = np.float32(4.0)
    for y in range(h):
        for x in range(w):
            v = d[y, x] + d[y, x + 1]
            v = v + d[y + 1, x]
            v = (v + d[y + 1, x + 1]) / four
            out[y, x] = v
            if v > best:
                best = v
    return best


@njit(nogil=True, cache=True)
def _envelope(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, tmp_lo: np.ndarray,
              tmp_hi: np.ndarray) -> None:
    """Lowest and highest value of each pixel's 3 x 3 neighbourhood (clipped at the edges)."""
    s0, s1 = x.shape
    for y in range(s0):
        y0, y1 = max(y - 1, 0), min(y + 1, s0 - 1)
        for c in range(s1):
            a, b = x[y0, c], x[y0, c]
            for yy in range(y0 + 1, y1 + 1):
                v = x[yy, c]
                a = min(a, v)
                b = max(b, v)
            tmp_lo[y, c], tmp_hi[y, c] = a, b
    for y in range(s0):
        for c in range(s1):
            c0, c1 = max(c - 1, 0), min(c + 1, s1 - 1)
            a, b = tmp_lo[y, c0], tmp_hi[y, c0]
            for cc in range(c0 + 1, c1 + 1):
                a = min(a, tmp_lo[y, cc])
                b = max(b, tmp_hi[y, cc])
            lo[y, c], hi[y, c] = a, b


@njit(nogil=True, cache=True)
def grey_maps(ba: np.ndarray, bb: np.ndarray, valid: np.ndarray, tolerant: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pick, plain peak, plain window map, tolerant peak) of pairs of blurred stacks.

    ba, bb: (3, n, S, S) float32, each side blurred by BLUR and the two BLUR_EQUALISE;
    valid: (n, S, S) float32 overlap mask, or (0, S, S) for none. Per pair: the combination
    of COMBOS with the least mean masked |a - b| (the first on ties), its masked difference
    windowed 2 x 2 (map and peak), and with `tolerant` the peak of the windowed distance of
    each side to the range the other takes within one pixel (verify._diff), masked.
    """
    n, s0, s1 = ba.shape[1], ba.shape[2], ba.shape[3]
    masked = valid.shape[0] > 0
    pick = np.zeros(n, np.int64)
    peak = np.zeros(n, np.float32)
    tpeak = np.zeros(n, np.float32)
    maps = np.empty((n, s0 - 1, s1 - 1), np.float32)
    d = np.empty((s0, s1), np.float32)
    win = np.empty((s0 - 1, s1 - 1), np.float32)
    xl, xh = np.empty((s0, s1), np.float32), np.empty((s0, s1), np.float32)
    yl, yh = np.empty((s0, s1), np.float32), np.empty((s0, s1), np.float32)
    t0, t1 = np.empty((s0, s1), np.float32), np.empty((s0, s1), np.float32)
    zero = np.float32(0.0)
    for i in range(n):
        sums = np.zeros(len(COMBOS))
        for y in range(s0):
            for x in range(s1):
                m = valid[i, y, x] if masked else np.float32(1.0)
                for k in range(len(COMBOS)):
                    sums[k] += abs(ba[COMBOS[k, 0], i, y, x] - bb[COMBOS[k, 1], i, y, x]) * m
        best = 0
        for k in range(1, len(COMBOS)):
            if sums[k] < sums[best]:
                best = k
        pick[i] = best
        xa, xb = ba[COMBOS[best, 0], i], bb[COMBOS[best, 1], i]
        for y in range(s0):
            for x in range(s1):
                v = abs(xa[y, x] - xb[y, x])
                d[y, x] = v * valid[i, y, x] if masked else v
        peak[i] = _box_max(d, maps[i])
        if not tolerant:
            continue
        _envelope(xa, xl, xh, t0, t1)
        _envelope(xb, yl, yh, t0, t1)
        for y in range(s0):
            for x in range(s1):
                a, b = xa[y, x], xb[y, x]
                x_to_y = max(max(a - yh[y, x], yl[y, x] - a), zero)
                y_to_x = max(max(b - xh[y, x], xl[y, x] - b), zero)
                v = abs(max(x_to_y, y_to_x) - zero)
                d[y, x] = v * valid[i, y, x] if masked else v
        tpeak[i] = _box_max(d, win)
    return pick, peak, maps, tpeak
