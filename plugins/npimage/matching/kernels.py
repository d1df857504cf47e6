"""Compiled kernels of compare: hash candidates of N x M pairs, cosines, dense selection.

1. `scan`: the (query, catalogue) pairs whose hash distances can reach the threshold.

Every pair of an N x M comparison has to be looked at once, since no index can be exact
at the distances the lowest band admits (up to ~22 of 64 bits per hash, random pairs
sit at 32). So this is a brute-force scan made cheap: XOR + popcount of the three packed
64-bit hashes, compiled by Numba (LLVM) into SIMD code: 1.5-2 billion pairs/s per core.
NumPy cannot do this: each of its array operations is one pass over memory per pair.

The scan tests a necessary condition first, a weighted sum of the three distances
`(da << s0) + (dd << s1) + (dp << s2) <= bound`, with a vectorised minimum over chunks
of catalogue rows for `GROUP` queries at a time. Only the chunks where that minimum
passes are re-read pair by pair against the exact table of feasible distance triples
(`feasible[da, dd, dp]`, built by compare.hash_bound from the scorer's lookup tables).
The result is exact: a pair is returned iff its distances are feasible.

2. `half_cosines` / `float_cosines`: cosines of given pairs of feature vectors read
straight from their float16 (or float32) rows, 0.2-0.7 us a pair of 1280-d vectors
(in cache or not), where NumPy needs ~6 us to gather, convert and normalise the rows
first. Every cosine that compare reports goes through them, so a pair's score does not
depend on the path that found it.

3. `dense_select`: when candidates are too many to score one by one, the pairs of a dense
block (cosines from one BLAS matrix product) whose score bound reaches the threshold,
~3 ns a pair where NumPy's matrix expressions take ~50.

This module imports Numba, so npimage.matching.compare imports it only when first needed;
compiled code is cached on disk (cache=True) next to this file or in Numba's user cache
dir (NUMBA_CACHE_DIR).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

#: Queries compared per load of a catalogue row (register blocking: 4 x 3 hashes in registers).
GROUP = 4
#: Catalogue rows per vectorised test; a chunk that passes is re-checked pair by pair.
CHUNK = 32
#: Catalogue rows kept hot in cache (4096 x 24 bytes) while every query passes over them.
TILE = 4096
#: Side of the feasibility table: a 64-bit hash distance is 0..64.
SIDE = 65


@intrinsic
def _popcount(typingctx, x):
    """Number of set bits of a uint64 (LLVM ctpop: one SIMD instruction on AVX-512)."""

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(types.uint64), codegen


@njit(nogil=True, cache=True)
def _recheck(qa, qd, qp, i, ca, cd, cp, j0, j1, feasible, out_q, out_c, n):
    """Append the pairs (i, j), j0 <= j < j1, whose distance triple is feasible; new count."""
    cap = out_q.shape[0]
    a, d, p = qa[i], qd[i], qp[i]
    for j in range(j0, j1):
        key = ((_popcount(a ^ ca[j]) * SIDE + _popcount(d ^ cd[j])) * SIDE
               + _popcount(p ^ cp[j]))
        if feasible[key]:
            if n < cap:
                out_q[n] = i
                out_c[n] = j
            n += 1
    return n


@njit(nogil=True, cache=True)
def scan(q, n_q, c, s0, s1, s2, bound, feasible, out_q, out_c):
    """Candidate pairs of queries q[:, :n_q] and catalogue rows c, written to out_q/out_c.

    q: (3, n) uint64 hashes (ahash, dhash, phash rows), n a multiple of GROUP (padded);
    c: (3, m) uint64; s0..s2 and bound: the linear pre-test; feasible: uint8 (65**3,).
    Returns the number of candidates; when it exceeds len(out_q) only the first
    len(out_q) are written (the caller then switches to dense scoring).
    """
    qa, qd, qp = q[0], q[1], q[2]
    ca, cd, cp = c[0], c[1], c[2]
    m = ca.shape[0]
    n = 0
    big = 1 << 40
    for t0 in range(0, m, TILE):
        t1 = min(m, t0 + TILE)
        for i in range(0, n_q, GROUP):
            a0, a1, a2, a3 = qa[i], qa[i + 1], qa[i + 2], qa[i + 3]
            d0, d1, d2, d3 = qd[i], qd[i + 1], qd[i + 2], qd[i + 3]
            p0, p1, p2, p3 = qp[i], qp[i + 1], qp[i + 2], qp[i + 3]
            for j0 in range(t0, t1, CHUNK):
                j1 = min(t1, j0 + CHUNK)
                m0 = m1 = m2 = m3 = big
                for j in range(j0, j1):
                    x, y, z = ca[j], cd[j], cp[j]
                    m0 = min(m0, (_popcount(a0 ^ x) << s0) + (_popcount(d0 ^ y) << s1)
                             + (_popcount(p0 ^ z) << s2))
                    m1 = min(m1, (_popcount(a1 ^ x) << s0) + (_popcount(d1 ^ y) << s1)
                             + (_popcount(p1 ^ z) << s2))
                    m2 = min(m2, (_popcount(a2 ^ x) << s0) + (_popcount(d2 ^ y) << s1)
                             + (_popcount(p2 ^ z) << s2))
                    m3 = min(m3, (_popcount(a3 ^ x) << s0) + (_popcount(d3 ^ y) << s1)
                             + (_popcount(p3 ^ z) << s2))
                if m0 <= bound and i < n_q:
                    n = _recheck(qa, qd, qp, i, ca, cd, cp, j0, j1, feasible, out_q, out_c, n)
                if m1 <= bound and i + 1 < n_q:
                    n = _recheck(qa, qd, qp, i + 1, ca, cd, cp, j0, j1, feasible, out_q, out_c, n)
                if m2 <= bound and i + 2 < n_q:
                    n = _recheck(qa, qd, qp, i + 2, ca, cd, cp, j0, j1, feasible, out_q, out_c, n)
                if m3 <= bound and i + 3 < n_q:
                    n = _recheck(qa, qd, qp, i + 3, ca, cd, cp, j0, j1, feasible, out_q, out_c, n)
    return n


def scan_pairs(q: np.ndarray, n_q: int, c: np.ndarray, shifts: tuple[int, int, int], bound: int,
               feasible: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(query idx, catalogue idx) int32 arrays of the candidates, or None past `capacity`.

    Output order: by catalogue tile of TILE rows, then query, then catalogue row.
    """
    out_q = np.empty(capacity, np.int32)
    out_c = np.empty(capacity, np.int32)
    n = scan(q, n_q, c, shifts[0], shifts[1], shifts[2], bound, feasible, out_q, out_c)
    if n > capacity:
        return None
    return out_q[:n], out_c[:n]


@intrinsic
def _half(typingctx, x):
    """float32 value of the float16 whose bits are the uint16 x (LLVM fpext: vcvtph2ps)."""

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@njit(nogil=True, cache=True, fastmath=True)
def half_cosines(a, b, ai, bi, out):
    """out[k] = cosine of rows a[ai[k]] and b[bi[k]] of float16 vectors given as uint16 bits."""
    d = a.shape[1]
    for k in range(ai.shape[0]):
        x = a[ai[k]]
        y = b[bi[k]]
        ab = np.float32(0.0)
        aa = np.float32(0.0)
        bb = np.float32(0.0)
        for j in range(d):
            u = _half(x[j])
            v = _half(y[j])
            ab += u * v
            aa += u * u
            bb += v * v
        out[k] = ab / np.sqrt(aa * bb) if aa > 0 and bb > 0 else np.float32(0.0)


@njit(nogil=True, cache=True, fastmath=True)
def float_cosines(a, b, ai, bi, out):
    """out[k] = cosine of rows a[ai[k]] and b[bi[k]] of float32 vectors."""
    d = a.shape[1]
    for k in range(ai.shape[0]):
        x = a[ai[k]]
        y = b[bi[k]]
        ab = np.float32(0.0)
        aa = np.float32(0.0)
        bb = np.float32(0.0)
        for j in range(d):
            ab += x[j] * y[j]
            aa += x[j] * x[j]
            bb += y[j] * y[j]
        out[k] = ab / np.sqrt(aa * bb) if aa > 0 and bb > 0 else np.float32(0.0)


def cosines(a: np.ndarray, b: np.ndarray, ai: np.ndarray, bi: np.ndarray) -> np.ndarray:
    """float32 cosines of the pairs (a[ai], b[bi]) of float16 or float32 row vectors."""
    out = np.empty(len(ai), np.float32)
    if len(ai) == 0:
        return out
    ai, bi = np.ascontiguousarray(ai, np.int64), np.ascontiguousarray(bi, np.int64)
    if a.dtype == np.float16 and b.dtype == np.float16:
        half_cosines(np.ascontiguousarray(a).view(np.uint16),
                     np.ascontiguousarray(b).view(np.uint16), ai, bi, out)
    else:
        float_cosines(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32),
                      ai, bi, out)
    return out


@njit(nogil=True, cache=True)
def dense_select(qh, ch, cos, margin, cos_floor, tables, fv_upper, cut, out_q, out_c):
    """Pairs (i, j) of a dense block whose score can reach `cut`, written to out_q/out_c.

    qh: (3, n) and ch: (3, m) uint64 hashes; cos: (n, m) float32 cosines, or (0, 0) without
    FV, each within `margin` of the exact cosine (0 for float32 products, more for
    bfloat16 ones: the bound uses cos + margin); cos_floor: the bound's cosine below which
    no hash distances can lift a pair to `cut` (such a pair is passed over without its
    popcounts: most pairs of a nightly); tables: (3, 65) float32 weighted hash terms;
    fv_upper[b]: the largest FV term for a cosine in bucket b of len(fv_upper) - 1 equal
    steps of [0, 1]. Returns the number of pairs; past len(out_q) they are counted, not
    written.
    """
    n, m = qh.shape[1], ch.shape[1]
    has_fv = cos.shape[0] > 0
    steps = fv_upper.shape[0] - 1
    cap = out_q.shape[0]
    found = 0
    for i in range(n):
        a, d, p = qh[0, i], qh[1, i], qh[2, i]
        for j in range(m):
            s = np.float32(0.0)
            if has_fv:
                x = cos[i, j] + margin
                if x < cos_floor:
                    continue
                x = min(max(x, np.float32(0.0)), np.float32(1.0))
                s = fv_upper[int(x * steps)]
            s += (tables[0, _popcount(a ^ ch[0, j])] + tables[1, _popcount(d ^ ch[1, j])]
                  + tables[2, _popcount(p ^ ch[2, j])])
            if s >= cut:
                if found < cap:
                    out_q[found] = i
                    out_c[found] = j
                found += 1
    return found


@njit(nogil=True, cache=True, fastmath=True)
def half_cosine_matrix(a, b, out):
    """out[i, j] = cosine of float16 rows a[i] and b[j] (uint16 bits): few a rows, many b.

    Each b row is read once and converted once, so a handful of queries against a whole
    catalogue costs one pass over its vectors, where unit rows + a BLAS product would
    first convert the catalogue to float32.
    """
    n, d = a.shape
    m = b.shape[0]
    af = np.empty((n, d), np.float32)
    na = np.empty(n, np.float32)
    for i in range(n):
        s = np.float32(0.0)
        for k in range(d):
            af[i, k] = _half(a[i, k])
            s += af[i, k] * af[i, k]
        na[i] = s
    yf = np.empty(d, np.float32)
    for j in range(m):
        bb = np.float32(0.0)
        for k in range(d):
            yf[k] = _half(b[j, k])
            bb += yf[k] * yf[k]
        for i in range(n):
            ab = np.float32(0.0)
            for k in range(d):
                ab += af[i, k] * yf[k]
            norm = na[i] * bb
            out[i, j] = ab / np.sqrt(norm) if norm > 0 else np.float32(0.0)
