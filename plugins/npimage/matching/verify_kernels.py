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
#: BLUR_EQUALISE on one side), in the order the first best is kept (grey_maps' sums spell
#: them out in this order).
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
    """Lowest and highest value of each pixel's 3 x 3 neighbourhood (clipped at the edges):
    three rows, then three columns, without a loop per neighbour (the edge rows and columns
    repeat their own pixel: the same minimum and maximum)."""
    s0, s1 = x.shape
    for y in range(s0):
        y0, y1 = max(y - 1, 0), min(y + 1, s0 - 1)
        for c in range(s1):
            u, v, w = x[y0, c], x[y, c], x[y1, c]
            tmp_lo[y, c] = min(min(u, v), w)
            tmp_hi[y, c] = max(max(u, v), w)
    for y in range(s0):
        lo[y, 0] = min(tmp_lo[y, 0], tmp_lo[y, min(1, s1 - 1)])
        hi[y, 0] = max(tmp_hi[y, 0], tmp_hi[y, min(1, s1 - 1)])
        for c in range(1, s1 - 1):
            lo[y, c] = min(min(tmp_lo[y, c - 1], tmp_lo[y, c]), tmp_lo[y, c + 1])
            hi[y, c] = max(max(tmp_hi[y, c - 1], tmp_hi[y, c]), tmp_hi[y, c + 1])
        if s1 > 1:
            lo[y, s1 - 1] = min(tmp_lo[y, s1 - 2], tmp_lo[y, s1 - 1])
            hi[y, s1 - 1] = max(tmp_hi[y, s1 - 2], tmp_hi[y, s1 - 1])


@njit(nogil=True, cache=True)
def grey_maps(ba: np.ndarray, bb: np.ndarray, ia: np.ndarray, ib: np.ndarray,
              valid: np.ndarray, tolerant: bool, keep_tolerant: bool = False
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pick, plain peak, plain window map, tolerant peak, tolerant window map) of pairs
    of blurred stacks.

    ba, bb: (3, m, S, S) float32, thumbnails blurred by BLUR and the two BLUR_EQUALISE;
    pair i is ba[:, ia[i]] against bb[:, ib[i]] (ia, ib: (n,) int64; a thumbnail in several
    pairs is blurred once and not copied per pair);
    valid: (n, S, S) float32 overlap mask, or (0, S, S) for none. Per pair: the combination
    of COMBOS with the least mean masked |a - b| (the first on ties), its masked difference
    windowed 2 x 2 (map and peak), and with `tolerant` the peak of the windowed distance of
    each side to the range the other takes within one pixel (verify._diff), masked; its
    windowed map is kept with `keep_tolerant` (else the last map is (0, S-1, S-1)): the
    seam test of verify.tolerant_map reads it.
    """
    n, s0, s1 = len(ia), ba.shape[2], ba.shape[3]
    masked = valid.shape[0] > 0
    pick = np.zeros(n, np.int64)
    peak = np.zeros(n, np.float32)
    tpeak = np.zeros(n, np.float32)
    maps = np.empty((n, s0 - 1, s1 - 1), np.float32)
    tmaps = np.empty((n if keep_tolerant else 0, s0 - 1, s1 - 1), np.float32)
    d = np.empty((s0, s1), np.float32)
    win = np.empty((s0 - 1, s1 - 1), np.float32)
    xl, xh = np.empty((s0, s1), np.float32), np.empty((s0, s1), np.float32)
    yl, yh = np.empty((s0, s1), np.float32), np.empty((s0, s1), np.float32)
    t0, t1 = np.empty((s0, s1), np.float32), np.empty((s0, s1), np.float32)
    zero = np.float32(0.0)
    for i in range(n):
        ja, jb = ia[i], ib[i]
        a0, a1, a2 = ba[0, ja], ba[1, ja], ba[2, ja]
        b0, b1, b2 = bb[0, jb], bb[1, jb], bb[2, jb]
        s_0, s_1, s_2, s_3, s_4 = 0.0, 0.0, 0.0, 0.0, 0.0  # the COMBOS, in float64
        for y in range(s0):
            for x in range(s1):
                m = valid[i, y, x] if masked else np.float32(1.0)
                u0, u1, u2, v0, v1, v2 = a0[y, x], a1[y, x], a2[y, x], b0[y, x], b1[y, x], b2[y, x]
                s_0 += abs(u0 - v0) * m
                s_1 += abs(u1 - v0) * m
                s_2 += abs(u0 - v1) * m
                s_3 += abs(u2 - v0) * m
                s_4 += abs(u0 - v2) * m
        sums = np.array([s_0, s_1, s_2, s_3, s_4])
        best = 0
        for k in range(1, len(COMBOS)):
            if sums[k] < sums[best]:
                best = k
        pick[i] = best
        xa, xb = ba[COMBOS[best, 0], ja], bb[COMBOS[best, 1], jb]
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
        tpeak[i] = _box_max(d, tmaps[i] if keep_tolerant else win)
    return pick, peak, maps, tpeak, tmaps


# -- the region tests of a pair that is not clean (verify._region_kind) ----------------------
#
# Why: a changed demo pair has ~9 changed areas, each judged by a dozen statistics (medians,
# flat shares, edge sums of both sides, medians of a ring around it, chroma medians): as
# NumPy calls, ~100 small calls per area that hold the GIL (~30 % of a demo pair's CPU).
# Here they are one compiled call per pair that stops as soon as the answer is known (a
# third area that is not a sticker: several regions differ). Every statistic is the value
# NumPy gives, bit for bit: medians are the middle value (or the float32 mean of the two
# middle ones), edge sums are summed in NumPy's pairwise order (`_psum`), and the tests
# compare the same float32 or float64 values in the same order.

#: What `region_kind` says (verify maps it to a reason).
KIND_STICKER, KIND_TEXT, KIND_CODE, KIND_SEVERAL = 0, 1, 2, 3


@njit(nogil=True, cache=True)
def _block_sum(v: np.ndarray, lo: int, n: int) -> np.float32:
    """numpy's pairwise_sum of v[lo:lo + n] for n <= 128: 8 accumulators (float32)."""
    if n < 8:
        res = np.float32(0.0)
        for i in range(lo, lo + n):
            res += v[i]
        return res
    r0, r1, r2, r3 = v[lo], v[lo + 1], v[lo + 2], v[lo + 3]
    r4, r5, r6, r7 = v[lo + 4], v[lo + 5], v[lo + 6], v[lo + 7]
    i = 8
    while i < n - n % 8:
        j = lo + i
        r0 += v[j]
        r1 += v[j + 1]
        r2 += v[j + 2]
        r3 += v[j + 3]
        r4 += v[j + 4]
        r5 += v[j + 5]
        r6 += v[j + 6]
        r7 += v[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += v[lo + i]
        i += 1
    out: np.float32 = res
    return out


@njit(nogil=True, cache=True)
def _psum(v: np.ndarray, lo: int, n: int) -> np.float32:
    """Sum of v[lo:lo + n] (float32) in NumPy's pairwise order (numpy's pairwise_sum: 8
    accumulators up to 128 values, else the sum of two halves, the first a multiple of 8
    long), so the same float32 as ndarray.sum(). Without recursion (a recursive kernel
    does not survive Numba's on-disk cache): an explicit stack of pending halves and of
    partial sums, combined in the recursion's order."""
    if n <= 128:
        return _block_sum(v, lo, n)
    # post-order walk of the split tree: (lo, n, state) with state 0 = to split, 1 = to add
    los, ns, states = np.empty(64, np.int64), np.empty(64, np.int64), np.empty(64, np.int64)
    sums = np.empty(64, np.float32)
    top, ntop = 0, 0
    los[0], ns[0], states[0] = lo, n, 0
    while top >= 0:
        lo_, n_, st = los[top], ns[top], states[top]
        top -= 1
        if st == 1:  # both halves summed: the last two partial sums
            sums[ntop - 2] = sums[ntop - 2] + sums[ntop - 1]
            ntop -= 1
        elif n_ <= 128:
            sums[ntop] = _block_sum(v, lo_, n_)
            ntop += 1
        else:
            n2 = n_ // 2
            n2 -= n2 % 8
            los[top + 1], ns[top + 1], states[top + 1] = lo_, n_, 1
            los[top + 2], ns[top + 2], states[top + 2] = lo_ + n2, n_ - n2, 0
            los[top + 3], ns[top + 3], states[top + 3] = lo_, n2, 0
            top += 3
    total: np.float32 = sums[0]
    return total


@njit(nogil=True, cache=True)
def _edge_sums(x: np.ndarray, y0: int, y1: int, x0: int, x1: int, buf: np.ndarray
               ) -> tuple[np.float32, np.float32]:
    """(sum |horizontal steps|, sum |vertical steps|) of x[y0:y1, x0:x1]: verify's
    np.abs(np.diff(patch, axis=1)).sum() and axis=0, the same float32 values."""
    h, w = y1 - y0, x1 - x0
    n = 0
    for y in range(y0, y1):
        for c in range(x0, x1 - 1):
            buf[n] = abs(x[y, c + 1] - x[y, c])
            n += 1
    gx = _psum(buf, 0, n) if h > 0 and w > 1 else np.float32(0.0)
    n = 0
    for y in range(y0, y1 - 1):
        for c in range(x0, x1):
            buf[n] = abs(x[y + 1, c] - x[y, c])
            n += 1
    gy = _psum(buf, 0, n) if h > 1 and w > 0 else np.float32(0.0)
    return gx, gy


@njit(nogil=True, cache=True)
def _middle(v: np.ndarray, n: int) -> float:
    """np.median of the first n values of v (float32; sorted in place): the middle value,
    or the float32 mean of the two middle ones."""
    v[:n].sort()
    k = n // 2
    if n % 2:
        return float(v[k])
    return float((v[k - 1] + v[k]) / np.float32(2.0))


@njit(nogil=True, cache=True)
def _flat(x: np.ndarray, y0: int, y1: int, x0: int, x1: int, flat: float, buf: np.ndarray
          ) -> tuple[float, float]:
    """(share of pixels within `flat` of the median, the median) of patch x[y0:y1, x0:x1]."""
    n = 0
    for y in range(y0, y1):
        for c in range(x0, x1):
            buf[n] = x[y, c]
            n += 1
    med = _middle(buf, n)
    m, f = np.float32(med), np.float32(flat)
    near = 0
    for y in range(y0, y1):
        for c in range(x0, x1):
            if abs(x[y, c] - m) <= f:
                near += 1
    return near / n, med


@njit(nogil=True, cache=True)
def _ring_level(x: np.ndarray, y0: int, y1: int, x0: int, x1: int, ring: int,
                buf: np.ndarray) -> float:
    """Median of the pixels of x within `ring` of the patch [y0:y1, x0:x1], outside it
    (the caller checks that there is one)."""
    s0, s1 = x.shape
    n = 0
    for y in range(max(0, y0 - ring), min(y1 + ring, s0)):
        for c in range(max(0, x0 - ring), min(x1 + ring, s1)):
            if not (y0 <= y < y1 and x0 <= c < x1):
                buf[n] = x[y, c]
                n += 1
    return _middle(buf, n)


@njit(nogil=True, cache=True)
def _saturation(c: np.ndarray, y0: int, y1: int, x0: int, x1: int, buf: np.ndarray
                ) -> float:
    """Distance from neutral (128, 128) of the per-channel medians of chroma patch
    c[y0:y1, x0:x1] (float64, as np.median and np.hypot give it)."""
    sq = np.zeros(2)
    for ch in range(2):
        n = 0
        for y in range(y0, y1):
            for x in range(x0, x1):
                buf[n] = c[y, x, ch]
                n += 1
        v = buf[:n]
        v.sort()
        k = n // 2
        med = float(v[k]) if n % 2 else (float(v[k - 1]) + float(v[k])) / 2.0
        sq[ch] = med - 128.0
    return float(np.hypot(sq[0], sq[1]))


@njit(nogil=True, cache=True)
def _pasted(a: np.ndarray, b: np.ndarray, y0: int, y1: int, x0: int, x1: int,
            side: tuple[float, float, float, float, float, float], ring: int,
            edges_ratio: float, sticker_flat: float, stands_out: float, buf: np.ndarray
            ) -> bool:
    """Is one side of the patch [y0:y1, x0:x1] (unclipped slice bounds) an object pasted on
    the picture (see verify._region_kind)? `side`: (flat share, median, edges) of a's
    patch then of b's."""
    fa, ma, ea, fb, mb, eb = side
    hi, lo = max(ea, eb), min(ea, eb)
    if hi < edges_ratio * max(lo, 1e-3):
        return False
    x, y = (a, b) if ea >= eb else (b, a)
    mx, my, fy = (ma, mb, fb) if ea >= eb else (mb, ma, fa)
    if (hi >= 2 * edges_ratio * max(lo, 1e-3) and x1 - x0 >= 1.2 * (y1 - y0)
            and fy < sticker_flat + 0.1):
        return True  # a wide label over busy detail
    s0, s1 = a.shape
    c0, c1 = min(y1, s0), min(x1, s1)
    inner = (c0 - y0) * (c1 - x0)
    outer = (min(y1 + ring, s0) - max(0, y0 - ring)) * (min(x1 + ring, s1) - max(0, x0 - ring))
    if outer == inner:
        return False  # no ring around the patch
    sx = abs(mx - _ring_level(x, y0, c0, x0, c1, ring, buf))
    sy = abs(my - _ring_level(y, y0, c0, x0, c1, ring, buf))
    return sx >= stands_out and sx - sy >= stands_out / 2


@njit(nogil=True, cache=True)
def region_kind(a: np.ndarray, b: np.ndarray, ca: np.ndarray, cb: np.ndarray,
                stats: np.ndarray, small_area: float, window: int, chroma_f: float,
                flat: float, sticker_flat: float, level_change: float, edges_ratio: float,
                stands_out: float, ring: int, saturation: float, neutral: float) -> int:
    """What verify._region_kind's loop says of the changed areas `stats` (rows x, y, w, h,
    area of cv2.connectedComponentsWithStats, background dropped) of one pair: a normalised
    grey thumbnail a, b (S, S) float32 and chroma ca, cb (C, C, 2) uint8 each; KIND_STICKER
    (one or two areas, all stickers), KIND_TEXT or KIND_CODE (the first area that is not a
    sticker, when one or two are not), else KIND_SEVERAL. An area up to `small_area` pixels
    is a sticker when one side is a flat fill of another level, a pasted object (`_pasted`)
    or a saturated colour over a neutral one (verify._region_kind says why); the other
    thresholds are verify's constants of those names."""
    s0, s1 = a.shape
    cs0, cs1 = ca.shape[0], ca.shape[1]
    buf = np.empty(s0 * s1, np.float32)
    rest, first = 0, KIND_STICKER
    for k in range(stats.shape[0]):
        x0, y0, w, h = stats[k, 0], stats[k, 1], stats[k, 2], stats[k, 3]
        y1, x1 = y0 + h + window - 1, x0 + w + window - 1  # the patch (unclipped bounds)
        py1, px1 = min(y1, s0), min(x1, s1)
        gxa, gya = _edge_sums(a, y0, py1, x0, px1, buf)
        gxb, gyb = _edge_sums(b, y0, py1, x0, px1, buf)
        if w * h <= small_area:
            fa, ma = _flat(a, y0, py1, x0, px1, flat, buf)
            fb, mb = _flat(b, y0, py1, x0, px1, flat, buf)
            ea, eb = float(gxa + gya), float(gxb + gyb)
            sticker = False
            if abs(ma - mb) > level_change:  # _is_sticker
                fx, fy, ex, ey = (fa, fb, ea, eb) if fa >= fb else (fb, fa, eb, ea)
                sticker = fx >= sticker_flat and (fy < sticker_flat
                                                  or ex > 2.0 * max(ey, 1e-3))
            if not sticker:
                sticker = _pasted(a, b, y0, y1, x0, x1, (fa, ma, ea, fb, mb, eb), ring,
                                  edges_ratio, sticker_flat, stands_out, buf)
            if not sticker:  # _colour_patch
                cy0, cx0 = int(y0 * chroma_f), int(x0 * chroma_f)
                cy1 = min(int(np.ceil((y0 + h + window) * chroma_f)), cs0)
                cx1 = min(int(np.ceil((x0 + w + window) * chroma_f)), cs1)
                sa = _saturation(ca, cy0, cy1, cx0, cx1, buf)
                sb = _saturation(cb, cy0, cy1, cx0, cx1, buf)
                sticker = max(sa, sb) >= saturation and min(sa, sb) <= neutral
            if sticker:
                continue
        rest += 1
        if rest > 2:
            return KIND_SEVERAL  # decided: a third area that is not a sticker
        if rest == 1:
            gx, gy = gxa + gxb, gya + gyb
            first = KIND_CODE if gx > np.float32(3.0) * gy else KIND_TEXT
    if rest == 0:
        return KIND_STICKER if stats.shape[0] <= 2 else KIND_SEVERAL
    return first


# -- normalisation over an overlap (verify._renorm) ---------------------------------------------

@njit(nogil=True, cache=True)
def renorm(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """verify._renorm of stacks x and valid (n, S, S) float32, C-contiguous: per thumbnail
    n = sum(valid) + 1e-6, m = sum(x * valid) / n, sd = sqrt(sum(((x - m) * valid)^2) / n)
    + 1e-3, then (x - m) / sd; float32 throughout, sums in NumPy's pairwise order
    (`_psum`; the overlap's size is a count, exact in any order): the floats NumPy's
    statements give, without their six passes and temporaries over the stack."""
    n = x.shape[0]
    size = x.shape[1] * x.shape[2]
    xs, vs = x.reshape(n, size), valid.reshape(n, size)
    out = np.empty((n, size), np.float32)
    buf = np.empty(size, np.float32)
    eps_n, eps_sd = np.float32(1e-6), np.float32(1e-3)
    for i in range(n):
        xi, vi, oi = xs[i], vs[i], out[i]
        count = np.float32(0.0)
        for k in range(size):
            count += vi[k]
            buf[k] = xi[k] * vi[k]
        count += eps_n
        m = _psum(buf, 0, size) / count
        for k in range(size):
            t = (xi[k] - m) * vi[k]
            buf[k] = t * t
        sd = np.sqrt(_psum(buf, 0, size) / count) + eps_sd
        for k in range(size):
            oi[k] = (xi[k] - m) / sd
    return out.reshape(x.shape)


@njit(nogil=True, cache=True)
def mean_abs_diffs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair of stacks a, b (n, S, S) float32: (mean |a - b mirrored left-right|,
    mean |a - b|), float32 as np.abs(a - b[:, :, ::-1]).mean(axis=(1, 2)) gives them (sums
    in NumPy's pairwise order, divided by S * S)."""
    n, s0, s1 = a.shape
    flipped, straight = np.empty(n, np.float32), np.empty(n, np.float32)
    buf = np.empty(s0 * s1, np.float32)
    count = np.float32(s0 * s1)
    for i in range(n):
        k = 0
        for y in range(s0):
            for c in range(s1):
                buf[k] = abs(a[i, y, c] - b[i, y, s1 - 1 - c])
                k += 1
        flipped[i] = _psum(buf, 0, k) / count
        k = 0
        for y in range(s0):
            for c in range(s1):
                buf[k] = abs(a[i, y, c] - b[i, y, c])
                k += 1
        straight[i] = _psum(buf, 0, k) / count
    return flipped, straight
