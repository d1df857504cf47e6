"""Hash candidate kernel: the (query, catalogue) pairs whose hash distances can reach the threshold.

Every pair of an N x M comparison has to be looked at once, since no index can be exact
at the distances the lowest band admits (up to ~22 of 64 bits per hash, random pairs
sit at 32). So this is a brute-force scan made cheap: XOR + popcount of the three packed
64-bit hashes, compiled by Numba (LLVM) into SIMD code, about one CPU cycle per pair.
NumPy cannot do this: each of its array operations is one pass over memory per pair.

The scan tests a necessary condition first, a weighted sum of the three distances
`(da << s0) + (dd << s1) + (dp << s2) <= bound`, with a vectorised minimum over chunks
of catalogue rows for `GROUP` queries at a time. Only the chunks where that minimum
passes are re-read pair by pair against the exact table of feasible distance triples
(`feasible[da, dd, dp]`, built by compare.hash_bound from the scorer's lookup tables).
The result is exact: a pair is returned iff its distances are feasible.

This module imports Numba, so npimage.compare imports it only when it scans; compiled
code is cached on disk (cache=True) next to this file or in Numba's user cache dir.
"""

from __future__ import annotations

import numpy as np
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
