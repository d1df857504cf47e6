"""Compare: N query images against M catalogue images, top-k per query above a threshold.

Candidates first, then scores, exactly (no approximate index: recall is 100 % by
construction, and tests/test_scale.py checks it against brute force):

- identical bytes (sha256 + size) are joined by sorting, and score 1.0;
- hashes: the scorer's lookup tables and the threshold bound the hash distances a
  qualifying pair can have, including the most the FV term could add (`hash_bound`).
  Every N x M pair is tested against that bound: XOR + popcount of the packed hashes in
  a compiled scan (npimage.matching.kernels, ~1.6 billion pairs/s per core), or in NumPy for a
  small block such as one image against a catalogue;
- the candidates are scored exactly (`pair_scores`: the lookup tables, plus the cosine
  of the two feature vectors, computed for those pairs only), and pairs >= threshold kept.

When a tile of the catalogue yields too many candidates to score one by one (a low
threshold, a catalogue of look-alike pictures), that tile is scored densely instead:
XOR + popcount matrices and one BLAS matrix product of unit vectors per block of
`block_size` rows, the top-k per query read from it, and its survivors re-scored by
`pair_scores` so that a pair's score never depends on which path found it.

Work is spread over the cores by a thread pool (the compiled code and NumPy release the
GIL); memory is bounded by the tile sizes and the top-k kept per query, never by N x M.
All-vs-all scores each pair once (scores are symmetric). Feature vectors stay float16 in
memory, as stored. Ties are broken by catalogue row (signatures are sorted by image_id),
so the result does not depend on how the catalogue is split into blocks or shards. An
image never matches itself (same row).
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from npimage.bands import round_scores
from npimage.matching import bf16
from npimage.matching.hashing import HASH_BITS
from npimage.matching.scoring import Scorer

#: Margin kept under the threshold by every bound and pre-selection, so that float32
#: rounding can never drop a pair whose exact score qualifies.
SLACK = 1e-5
#: Queries per block of work.
QUERY_BLOCK = 1024
#: Catalogue rows per tile (one task of the thread pool): at most CATALOGUE_TILE, at least
#: MIN_TILE, else the catalogue split evenly over the threads.
CATALOGUE_TILE = 65536
MIN_TILE = 4096
#: Highest share of a tile's pairs that are scored one by one (else the tile is scored
#: densely). Measured: a candidate costs ~0.4 us with FV (two float16 rows read) against
#: ~50 ns per pair of a dense block (BLAS product + compiled selection); ~0.1 us without
#: FV against ~1.5 ns per pair.
SPARSE_MAX_DENSITY = {True: 0.1, False: 0.015}
#: Dense blocks: pairs per query (plus a floor) the compiled selection may return before
#: the block is reduced to its top-k by matrix operations instead.
DENSE_PER_QUERY = 32
DENSE_MIN_CAPACITY = 4096
#: Dense blocks of at most this many queries get their cosines from float16 rows directly.
FEW_QUERIES = 16
#: Buckets of [0, 1] in the table bounding the FV term from above in dense blocks.
FV_STEPS = 4096
#: All-vs-all comparisons score each unordered pair once and keep it in both orientations.
SYMMETRIC = True
#: Comparisons of at most this many pairs run in the calling thread (no pool to start).
INLINE_PAIRS = 1 << 22
#: Blocks of at most this many pairs are scanned with NumPy rather than the compiled scan.
NUMPY_SCAN_PAIRS = 1 << 20
#: Candidates scored at once (bounds the memory of gathered hashes and scores).
SCORE_CHUNK = 1 << 20
#: Kept pairs accumulated before they are reduced to the top-k again.
REDUCE_EVERY = 2_000_000

MATCH_COLUMNS = pa.schema(
    [
        ("image_id", pa.string()),
        ("match_image_id", pa.string()),
        ("score", pa.float32()),
        ("dah", pa.float32()),
        ("ddh", pa.float32()),
        ("dph", pa.float32()),
        ("dfv", pa.float32()),
        ("same_bytes", pa.bool_()),
    ]
)


@dataclass
class SignatureArrays:
    """Columns of a signature table as NumPy arrays, ready for vectorised comparison."""

    ids: np.ndarray  # object (str), image ids
    rows: np.ndarray  # int64, row numbers in the client's full signature table
    sha: np.ndarray  # int64, first 64 bits of sha256
    size: np.ndarray  # int64, size in bytes
    hashes: np.ndarray  # uint64 (n, 3): ahash, dhash, phash
    fv: np.ndarray | None  # float16 or float32 (n, d), normalised on use; None when FV is off

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: np.ndarray) -> SignatureArrays:
        """The rows `idx` of these arrays."""
        return SignatureArrays(self.ids[idx], self.rows[idx], self.sha[idx], self.size[idx],
                               self.hashes[idx], None if self.fv is None else self.fv[idx])

    def slice(self, start: int, stop: int) -> SignatureArrays:
        """Rows start..stop as views (no copy: catalogue tiles of float16 vectors are large)."""
        return SignatureArrays(self.ids[start:stop], self.rows[start:stop],
                               self.sha[start:stop], self.size[start:stop],
                               self.hashes[start:stop],
                               None if self.fv is None else self.fv[start:stop])


# -- reading signatures ------------------------------------------------------------------

def _fv_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """(n, d) float16 matrix of a list<float16> column with no nulls (as stored: 2 bytes)."""
    arr = column.combine_chunks()
    if arr.null_count:
        raise ValueError(
            f"{arr.null_count} signature(s) lack a feature vector although FV is on; "
            "rerun in full mode or with fv off")
    values = arr.flatten().to_numpy(zero_copy_only=False)
    if values.dtype != np.float16:
        values = values.astype(np.float32)
    return values.reshape(len(arr), -1) if len(arr) else np.zeros((0, 1), np.float32)


def _sha_prefix(column: pa.ChunkedArray) -> np.ndarray:
    """First 64 bits of hex sha256 strings as int64, vectorised over the string buffer."""
    arr = pc.utf8_slice_codeunits(column.combine_chunks(), 0, 16).cast(pa.large_string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.int64)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + n + 1]
    if not np.all(np.diff(offsets) == 16):
        raise ValueError("sha256 values must be 64 hex characters")
    chars = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].reshape(n, 16)
    digits = np.where(chars <= ord("9"), chars - ord("0"), (chars | 0x20) - ord("a") + 10)
    if np.any(digits > 15):
        raise ValueError("sha256 values must be hexadecimal")
    nibbles = digits.astype(np.uint64) << (np.arange(60, -1, -4, dtype=np.uint64))
    prefix: np.ndarray = np.bitwise_or.reduce(nibbles, axis=1).view(np.int64)
    return prefix


def arrays_from_table(table: pa.Table, use_fv: bool, first_row: int = 0) -> SignatureArrays:
    """SignatureArrays of a signatures table whose first row is `first_row` of the client's."""
    if use_fv:
        models = pc.unique(table["fv_model"].drop_null()).to_pylist()
        if len(models) > 1:
            raise ValueError(f"feature vectors of different models cannot be compared: {models}")
    return SignatureArrays(
        ids=table["image_id"].to_numpy(zero_copy_only=False).astype(object),
        rows=np.arange(first_row, first_row + table.num_rows, dtype=np.int64),
        sha=_sha_prefix(table["sha256"]),
        size=table["size_bytes"].to_numpy().astype(np.int64),
        hashes=np.stack([table[c].to_numpy().astype(np.int64) for c in ("ahash", "dhash", "phash")],
                        axis=1).view(np.uint64) if table.num_rows else np.zeros((0, 3), np.uint64),
        fv=_fv_matrix(table["fv"]) if use_fv else None,
    )


# -- scores ------------------------------------------------------------------------------

def unit_rows(fv: np.ndarray) -> np.ndarray:
    """float32 copy of feature vectors with rows of unit length (zero rows stay zero)."""
    x = fv.astype(np.float32)
    norms = np.sqrt(np.sum(x * x, axis=1, keepdims=True))
    x /= np.where(norms > 0, norms, np.float32(1.0))
    return x


def score_block(q: SignatureArrays, c: SignatureArrays, scorer: Scorer) -> np.ndarray:
    """(len(q), len(c)) float32 scores; self pairs get -1 so they never qualify.

    The dense reference: every pair, hashes through the lookup tables and FV by one BLAS
    matrix product. compare uses it for dense tiles and re-scores their survivors with
    pair_scores (same values up to float32 rounding of the matrix product).
    """
    score = np.zeros((len(q), len(c)), dtype=np.float32)
    for j in range(3):
        bits = np.bitwise_count(q.hashes[:, j, None] ^ c.hashes[None, :, j])
        score += scorer.hash_tables[j][bits]
    if scorer.use_fv and q.fv is not None and c.fv is not None:
        score += scorer.fv_term(unit_rows(q.fv) @ unit_rows(c.fv).T)
    same = (q.sha[:, None] == c.sha[None, :]) & (q.size[:, None] == c.size[None, :])
    score[same] = 1.0
    score[q.rows[:, None] == c.rows[None, :]] = -1.0
    return round_scores(score)


def pair_cosines(qfv: np.ndarray, cfv: np.ndarray, qi: np.ndarray, ci: np.ndarray
                 ) -> np.ndarray:
    """float32 cosines of the pairs (qfv[qi], cfv[ci]), read from the stored rows (compiled)."""
    from npimage.matching.kernels import cosines  # Numba: imported when first needed

    return cosines(qfv, cfv, qi, ci)


def pair_raw(q: SignatureArrays, c: SignatureArrays, qi: np.ndarray, ci: np.ndarray,
             fv: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The raw components of the pairs (q[qi], c[ci]): hash distances (m, 3) in bits, FV
    cosines (None without `fv` or vectors on both sides), identical bytes (m,). Read from
    the stored rows by index, no copy of the pairs' vectors (2.5 KB a side)."""
    bits = np.bitwise_count(q.hashes[qi] ^ c.hashes[ci])
    cos = (pair_cosines(q.fv, c.fv, qi, ci)
           if fv and q.fv is not None and c.fv is not None else None)
    same = (q.sha[qi] == c.sha[ci]) & (q.size[qi] == c.size[ci])
    return bits, cos, same


def pair_scores(q: SignatureArrays, c: SignatureArrays, qi: np.ndarray, ci: np.ndarray,
                scorer: Scorer) -> np.ndarray:
    """float32 scores of the pairs (q[qi], c[ci]), exactly as score_block computes them."""
    h, cos, same = pair_raw(q, c, qi, ci, scorer.use_fv and len(qi) > 0)
    score = component_scores(h, cos, same, scorer)
    score[q.rows[qi] == c.rows[ci]] = -1.0
    return score


def component_scores(bits: np.ndarray, cos: np.ndarray | None, same_bytes: np.ndarray,
                     scorer: Scorer) -> np.ndarray:
    """float32 scores of pairs from their raw components: hash distances (m, 3) in bits,
    cosines (m,) or None, identical bytes (m,) (score 1.0); rounded once (bands).

    The one formula of a pair's score: compare (pair_scores) and the weight fit
    (quality.pairs) both use it.
    """
    score = scorer.score(np.asarray(bits, np.intp), cos)
    score = np.where(same_bytes, np.float32(1.0), score).astype(np.float32)
    return round_scores(score)


# -- candidate bound ---------------------------------------------------------------------

@dataclass(frozen=True)
class HashBound:
    """The hash distances a pair can have and still reach the threshold.

    `feasible[da, dd, dp]` is true when the three hash terms, plus the most the FV term
    can add, reach `threshold - SLACK`. `shifts` and `bound` give the scan a cheap
    necessary test, `sum(d_c << shifts_c) <= bound`, chosen to let through as few
    random pairs as possible. `random_rate` is the share of pairs of random hashes that
    are feasible (the expected candidate density of unrelated pictures).
    """

    feasible: np.ndarray  # bool (65, 65, 65)
    shifts: tuple[int, int, int]
    bound: int
    random_rate: float

    @property
    def empty(self) -> bool:
        return not bool(self.feasible.any())


def _max_fv_term(scorer: Scorer) -> float:
    """Largest value the weighted FV term can take (0 without FV): at a knot or an end."""
    if not scorer.use_fv:
        return 0.0
    xs = [x for x, _ in scorer.curves["dfv"] if 0.0 <= x <= 1.0]
    return float(np.max(scorer.fv_term(np.array([0.0, 1.0, *xs], np.float32))))


def _binomial_pmf() -> np.ndarray:
    """P(distance = d) between two random 64-bit hashes, d = 0..64."""
    logs = np.cumsum(np.log(np.arange(1, HASH_BITS + 1)))
    logf = np.concatenate([[0.0], logs])
    d = np.arange(HASH_BITS + 1)
    pmf: np.ndarray = np.exp(logf[-1] - logf[d] - logf[HASH_BITS - d] - HASH_BITS * np.log(2.0))
    return pmf


@lru_cache(maxsize=32)
def _hash_bound(tables: bytes, fv_max: float, threshold: float) -> HashBound:
    t = np.frombuffer(tables, np.float32).reshape(3, HASH_BITS + 1).astype(np.float64)
    total = t[0][:, None, None] + t[1][None, :, None] + t[2][None, None, :]
    feasible = total + fv_max >= threshold - SLACK
    pmf = _binomial_pmf()
    prob = pmf[:, None, None] * pmf[None, :, None] * pmf[None, None, :]
    rate = float(prob[feasible].sum())
    if not feasible.any():
        return HashBound(feasible, (0, 0, 0), -1, 0.0)
    if feasible.all():  # every test passes every pair: the search below would keep its first
        return HashBound(feasible, (0, 0, 0), 3 * HASH_BITS, rate)
    d = np.arange(HASH_BITS + 1)
    best: tuple[float, tuple[int, int, int], int] | None = None
    for a, b, c in itertools.product(range(4), repeat=3):
        lin = ((d << a)[:, None, None] + (d << b)[None, :, None] + (d << c)[None, None, :])
        bound = int(lin[feasible].max())
        passed = float(prob[lin <= bound].sum())
        if best is None or passed < best[0] - 1e-15:
            best = (passed, (a, b, c), bound)
    assert best is not None
    return HashBound(feasible, best[1], best[2], rate)


def hash_bound(scorer: Scorer, threshold: float) -> HashBound:
    """The HashBound of a scorer at a threshold (cached: 64 candidate linear tests tried)."""
    return _hash_bound(np.ascontiguousarray(scorer.hash_tables, np.float32).tobytes(),
                       _max_fv_term(scorer), float(threshold))


def _scan_numpy(q_hashes: np.ndarray, c_hashes: np.ndarray, bound: HashBound
                ) -> tuple[np.ndarray, np.ndarray]:
    """The exact candidates of a small block with NumPy: distance matrices, feasible table."""
    c = np.ascontiguousarray(c_hashes.T)
    key = np.bitwise_count(q_hashes[:, 0, None] ^ c[0]).astype(np.int32)
    for j in (1, 2):
        key *= HASH_BITS + 1
        key += np.bitwise_count(q_hashes[:, j, None] ^ c[j])
    qi, ci = np.nonzero(bound.feasible.ravel()[key])
    return qi.astype(np.int32), ci.astype(np.int32)


def hash_candidates(q_hashes: np.ndarray, c_hashes: np.ndarray, bound: HashBound,
                    capacity: int | None = None, method: str = "auto"
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """(query idx, catalogue idx) of every pair whose hash distances are feasible.

    Exact (a pair is returned iff bound.feasible[da, dd, dp]); None when there are more
    than `capacity` (default: all pairs fit). Hashes are (n, 3) uint64 arrays. `method`:
    "compiled" (the Numba scan), "numpy", or "auto": NumPy for blocks of at most
    NUMPY_SCAN_PAIRS pairs (a one-image query then loads no compiled code), else compiled.
    """
    nq, nc = len(q_hashes), len(c_hashes)
    if capacity is None:
        capacity = nq * nc
    if bound.empty or nq == 0 or nc == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    if method == "numpy" or (method == "auto" and nq * nc <= NUMPY_SCAN_PAIRS):
        found = _scan_numpy(q_hashes, c_hashes, bound)
        return found if len(found[0]) <= capacity else None
    from npimage.matching.kernels import GROUP, scan_pairs  # Numba: imported when first needed

    padded = -(-nq // GROUP) * GROUP
    q = np.empty((3, padded), np.uint64)
    q[:, :nq] = q_hashes.T
    q[:, nq:] = q_hashes[-1:].T
    c = np.ascontiguousarray(c_hashes.T)
    return scan_pairs(q, nq, c, bound.shifts, bound.bound,
                      np.ascontiguousarray(bound.feasible.ravel(), np.uint8), capacity)


def _equal_pairs(a_sha: np.ndarray, a_size: np.ndarray, b_sha: np.ndarray,
                 b_size: np.ndarray, b_rows: np.ndarray, k: int | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(a idx, b idx) of equal (sha, size), at most the first k + 1 b's by row per a."""
    order = np.lexsort((b_rows, b_sha))
    sha_sorted = b_sha[order]
    lo = np.searchsorted(sha_sorted, a_sha, side="left")
    hi = np.searchsorted(sha_sorted, a_sha, side="right")
    count = hi - lo if k is None else np.minimum(hi - lo, k + 1)
    ai = np.repeat(np.arange(len(a_sha)), count)
    start = np.repeat(lo - (np.cumsum(count) - count), count)
    bi = order[start + np.arange(len(ai))]
    keep = a_size[ai] == b_size[bi]
    return ai[keep], bi[keep]


def same_bytes_pairs(q: SignatureArrays, c: SignatureArrays, k: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(query idx, catalogue idx) of pairs with identical bytes (sha256 prefix + size).

    With k, only what a top-k can use: per query its first k + 1 copies by catalogue
    row, per catalogue image its first k + 1 queries by row (a picture stored 10 000
    times must not yield 10^8 pairs). Self pairs are included; the caller drops them.
    """
    cm = np.nonzero(np.isin(c.sha, q.sha))[0]  # usually few: sort those only
    qm = np.nonzero(np.isin(q.sha, c.sha[cm]))[0]
    if len(cm) == 0 or len(qm) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    qi, ci = _equal_pairs(q.sha[qm], q.size[qm], c.sha[cm], c.size[cm], c.rows[cm], k)
    if k is not None:
        ci2, qi2 = _equal_pairs(c.sha[cm], c.size[cm], q.sha[qm], q.size[qm], q.rows[qm], k)
        qi, ci = np.concatenate([qi, qi2]), np.concatenate([ci, ci2])
    return qm[qi], cm[ci]


# -- top-k -------------------------------------------------------------------------------

def top_k_per_query(qi: np.ndarray, crow: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best (score desc, catalogue row asc) entries of each query."""
    order = np.lexsort((crow, -score, qi))
    qs = qi[order]
    start = np.searchsorted(qs, qs, side="left")
    return order[(np.arange(len(qs)) - start) < k]


class _Kept:
    """Pairs >= threshold kept so far: each query's top-k (and each catalogue image's,
    both ways), reduced again whenever REDUCE_EVERY new pairs have come in."""

    def __init__(self, k: int, both_ways: bool, q_rows: np.ndarray, c_rows: np.ndarray) -> None:
        self.k, self.both_ways, self.q_rows, self.c_rows = k, both_ways, q_rows, c_rows
        self.n_cat = max(len(c_rows), 1)
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending = 0

    def add(self, qi: np.ndarray, ci: np.ndarray, score: np.ndarray) -> None:
        """Keep these pairs (query idx, catalogue idx, score); reduce when enough came in."""
        if len(qi):
            self.parts.append((qi.astype(np.int64), ci.astype(np.int64), score))
            self.pending += len(qi)
        if self.pending >= REDUCE_EVERY:
            self.parts = [self.result()]
            self.pending = 0

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query idx, catalogue idx, score) of the union of the top-k lists, each pair once."""
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        qi, ci, sc = (np.concatenate(x) for x in zip(*self.parts, strict=True))
        _, first = np.unique(qi * self.n_cat + ci, return_index=True)
        qi, ci, sc = qi[first], ci[first], sc[first]
        sel = top_k_per_query(qi, self.c_rows[ci], sc, self.k)
        if self.both_ways:
            sel = np.union1d(sel, top_k_per_query(ci, self.q_rows[qi], sc, self.k))
        return qi[sel], ci[sel], sc[sel]


# -- tiles -------------------------------------------------------------------------------

def _top_mask(score: np.ndarray, k: int, threshold: float) -> np.ndarray:
    """Entries of a score matrix that may be in the top-k of their row and >= threshold.

    A superset by SLACK, so that re-scoring them exactly cannot miss a top-k member.
    """
    m = score.shape[1]
    cut = np.full(score.shape[0], threshold, np.float32)
    if m > k:
        cut = np.maximum(cut, np.partition(score, m - k, axis=1)[:, m - k])
    return score >= (cut - SLACK)[:, None]


@lru_cache(maxsize=32)
def _fv_upper(knots: tuple[tuple[float, float], ...], weight: float) -> np.ndarray:
    """fv_upper_table of a curve's knots and weight (cached: built once per scorer)."""
    xs, ys = (np.array(v, np.float64) for v in zip(*knots, strict=True))

    def term(x: np.ndarray) -> np.ndarray:
        values: np.ndarray = weight * np.interp(x, xs, ys)
        return values

    grid = np.linspace(0.0, 1.0, FV_STEPS + 1)
    at = term(grid)
    upper = np.maximum(at[:-1], at[1:])  # bucket b covers [b, b + 1] / FV_STEPS
    inside = xs[(xs > 0.0) & (xs < 1.0)]
    np.maximum.at(upper, np.minimum((inside * FV_STEPS).astype(np.int64), FV_STEPS - 1),
                  term(inside))
    table: np.ndarray = np.append(upper, at[-1]).astype(np.float32)
    return table


def fv_upper_table(scorer: Scorer) -> np.ndarray:
    """(FV_STEPS + 1,) float32: the largest FV term of a cosine in each bucket of [0, 1]."""
    return _fv_upper(tuple(tuple(k) for k in scorer.curves["dfv"]), float(scorer.weights["dfv"]))


def cos_floor(upper: np.ndarray, tables: np.ndarray, cut: np.float32) -> np.float32:
    """The cosine below which a pair cannot reach `cut` whatever its hashes (dense_select
    passes over it): the start of the first bucket of `upper` whose FV term plus the largest
    hash terms (float32 sums, as the kernel adds them) reaches the cut. Buckets are
    1 / FV_STEPS wide, a power of two, so `x < floor` and the kernel's bucket of x agree
    exactly."""
    hashes = np.float32(0.0)
    for row in tables:
        hashes = np.float32(hashes + np.float32(row.max()))
    reach = np.flatnonzero(upper.astype(np.float32) + hashes >= np.float32(cut))
    if not len(reach):
        return np.float32(np.inf)
    return np.float32(-np.inf) if reach[0] == 0 else np.float32(reach[0] / (len(upper) - 1))


def _dense_top(q: SignatureArrays, c: SignatureArrays, scorer: Scorer, k: int,
               threshold: float, both_ways: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of a block that may be in a top-k of their row (or column), from the matrix."""
    score = score_block(q, c, scorer)
    score[(q.sha[:, None] == c.sha[None, :]) & (q.size[:, None] == c.size[None, :])] = -1.0
    keep = _top_mask(score, k, threshold)
    if both_ways:
        keep |= _top_mask(score.T, k, threshold).T
    qi, ci = np.nonzero(keep)
    return qi, ci


def _score_dense(q: SignatureArrays, c: SignatureArrays, scorer: Scorer, k: int,
                 threshold: float, both_ways: bool, block_size: int, bf16_ok: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tile's pairs >= threshold, from blocks of block_size catalogue rows scored densely.

    Per block: one BLAS product of unit vectors (in bfloat16 where the CPU multiplies it
    natively and the tile is large: `npimage.matching.bf16`; a few queries: a compiled pass
    over the float16 rows instead), then the compiled dense_select keeps the
    pairs whose score bound reaches the threshold; a block with more than
    DENSE_PER_QUERY of them per query is reduced to its top-k by matrix operations
    instead. Either way the selected pairs are re-scored exactly by pair_scores.
    """
    from npimage.matching.kernels import (  # Numba: when first needed
        dense_select,
        half_cosine_matrix,
    )

    fv = scorer.use_fv and q.fv is not None and c.fv is not None
    few = (fv and q.fv is not None and c.fv is not None and len(q) <= FEW_QUERIES
           and q.fv.dtype == c.fv.dtype == np.float16)
    qu = None if not fv or few or q.fv is None else unit_rows(q.fv)
    qb = bf16.rows(qu) if qu is not None and bf16_ok else None
    margin = np.float32(bf16.MARGIN if qb is not None else 0.0)
    qbits = np.ascontiguousarray(q.fv).view(np.uint16) if few else None
    qh = np.ascontiguousarray(q.hashes.T)
    tables = np.ascontiguousarray(scorer.hash_tables, np.float32)
    upper = fv_upper_table(scorer) if fv else np.zeros(1, np.float32)
    cut = np.float32(threshold - SLACK)
    floor = cos_floor(upper, tables, cut) if fv else np.float32(-np.inf)
    no_cos = np.zeros((0, 0), np.float32)
    capacity = DENSE_PER_QUERY * len(q) + DENSE_MIN_CAPACITY
    out_q, out_c = np.empty(capacity, np.int32), np.empty(capacity, np.int32)
    qs, cs = [], []
    for b0 in range(0, len(c), block_size):
        block = c.slice(b0, b0 + block_size)
        if few:  # a few queries: one pass over the float16 rows, no float32 copy
            cos = np.empty((len(q), len(block)), np.float32)
            half_cosine_matrix(qbits, np.ascontiguousarray(block.fv).view(np.uint16), cos)
        elif qu is None or block.fv is None:
            cos = no_cos
        elif qb is not None:  # bfloat16 product, each cosine within `margin`
            cos = bf16.cosines(qb, unit_rows(block.fv))
        else:
            cos = qu @ unit_rows(block.fv).T
        n = dense_select(qh, np.ascontiguousarray(block.hashes.T), cos, margin, floor,
                         tables, upper, cut, out_q, out_c)
        if n <= capacity:
            qi, ci = out_q[:n].copy(), out_c[:n].copy()
        else:
            qi, ci = _dense_top(q, block, scorer, k, threshold, both_ways)
        same = (q.sha[qi] == block.sha[ci]) & (q.size[qi] == block.size[ci])
        qs.append(qi[~same])  # identical bytes come from same_bytes_pairs
        cs.append(ci[~same] + b0)
    qi, ci = np.concatenate(qs), np.concatenate(cs)
    score = pair_scores(q, c, qi, ci, scorer)
    keep = score >= threshold
    return qi[keep], ci[keep], score[keep]


def _score_tile(q: SignatureArrays, c: SignatureArrays, scorer: Scorer, bound: HashBound,
                k: int, threshold: float, both_ways: bool, block_size: int,
                bf16_ok: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query idx, tile idx, score) of a tile's pairs >= threshold (identical bytes aside);
    `bf16_ok`: a dense tile may take its cosines in bfloat16 (`npimage.matching.bf16`)."""
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if bound.empty:
        return empty
    limit = SPARSE_MAX_DENSITY[scorer.use_fv]
    found = None
    if bound.random_rate <= limit:
        found = hash_candidates(q.hashes, c.hashes, bound,
                                capacity=int(limit * len(q) * len(c)) + 4096)
    if found is None:
        return _score_dense(q, c, scorer, k, threshold, both_ways, block_size, bf16_ok)
    out = []
    for s in range(0, len(found[0]), SCORE_CHUNK):
        qi, ci = found[0][s:s + SCORE_CHUNK], found[1][s:s + SCORE_CHUNK]
        same = (q.sha[qi] == c.sha[ci]) & (q.size[qi] == c.size[ci])
        qi, ci = qi[~same], ci[~same]  # identical bytes come from same_bytes_pairs
        score = pair_scores(q, c, qi, ci, scorer)
        keep = score >= threshold
        out.append((qi[keep], ci[keep], score[keep]))
    if not out:
        return empty
    qi, ci, score = (np.concatenate(x) for x in zip(*out, strict=True))
    return qi, ci, score


def compare_threads() -> int:
    """Threads for compare: the cores this process may use."""
    return max(1, len(os.sched_getaffinity(0)))


def compare(queries: SignatureArrays, catalogue: SignatureArrays, scorer: Scorer, *,
            top_k: int, threshold: float, block_size: int = 2048, both_ways: bool = False,
            progress: Callable[[int], None] | None = None) -> pa.Table:
    """Top-k matches of every query in the catalogue, with their components (MATCH_COLUMNS).

    With `both_ways`, also the top-k queries of every catalogue image: an incremental run
    needs them to update the lists of catalogue images that new images now belong in.
    Pairs are returned once, oriented (query, catalogue image). `block_size` bounds the
    catalogue rows of a dense score matrix. All-vs-all (queries and catalogue the same
    rows) scores each pair once: scores are symmetric, so half the tiles are skipped.
    """
    kept = _Kept(top_k, both_ways, queries.rows, catalogue.rows)
    qi, ci = same_bytes_pairs(queries, catalogue, top_k)
    not_self = queries.rows[qi] != catalogue.rows[ci]
    kept.add(qi[not_self], ci[not_self], np.ones(int(not_self.sum()), np.float32))

    bound = hash_bound(scorer, threshold)
    n, m = len(queries), len(catalogue)
    dense_fv = scorer.use_fv and bound.random_rate > SPARSE_MAX_DENSITY[True]
    big = n * m > (INLINE_PAIRS // 64 if dense_fv else INLINE_PAIRS)  # dense FV: ~50x the work
    bf16_ok = dense_fv and bf16.wanted(n * m)
    threads = compare_threads() if big else 1
    tile = max(MIN_TILE, min(CATALOGUE_TILE, -(-m // threads)))
    mirror = SYMMETRIC and n == m and np.array_equal(queries.rows, catalogue.rows)
    jobs = [(q0, c0) for q0 in range(0, n, QUERY_BLOCK) for c0 in range(0, m, tile)]
    if mirror:  # all-vs-all: the tiles below the diagonal are the mirror of those above
        below = [(q0, c0) for q0, c0 in jobs if c0 + tile <= q0]
        jobs = [job for job in jobs if job[1] + tile > job[0]]
        if progress:
            progress(sum(min(QUERY_BLOCK, n - q0) * min(tile, m - c0) for q0, c0 in below))

    def start(q0: int, c0: int) -> int:
        """First catalogue row of a tile worth scanning (all-vs-all: none below q0)."""
        return max(c0, q0) if mirror else c0

    def run(q0: int, c0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _score_tile(queries.slice(q0, q0 + QUERY_BLOCK),
                           catalogue.slice(start(q0, c0), c0 + tile), scorer, bound, top_k,
                           threshold, both_ways or mirror, max(1, block_size), bf16_ok)

    def keep(q0: int, c0: int, found: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        qi, ci, sc = found[0] + q0, found[1] + start(q0, c0), found[2]
        if mirror:  # each pair once (query < catalogue image), kept in both orientations
            upper = qi < ci
            qi, ci, sc = qi[upper], ci[upper], sc[upper]
            kept.add(ci, qi, sc)
        kept.add(qi, ci, sc)
        if progress:
            progress(min(QUERY_BLOCK, n - q0) * min(tile, m - c0))

    if threads == 1:
        for q0, c0 in jobs:
            keep(q0, c0, run(q0, c0))
    else:
        inflight: deque[tuple[int, int, Future[Any]]] = deque()
        with ThreadPoolExecutor(threads, thread_name_prefix="npimage-compare") as pool:
            for q0, c0 in jobs:
                inflight.append((q0, c0, pool.submit(run, q0, c0)))
                if len(inflight) > 2 * threads:
                    q1, c1, fut = inflight.popleft()
                    keep(q1, c1, fut.result())
            while inflight:
                q1, c1, fut = inflight.popleft()
                keep(q1, c1, fut.result())
    qi, ci, sc = kept.result()
    return _match_table(queries, catalogue, qi, ci, sc)


# -- output ------------------------------------------------------------------------------

def components(q: SignatureArrays, c: SignatureArrays, qi: np.ndarray, ci: np.ndarray
               ) -> dict[str, np.ndarray | None]:
    """Every component of the pairs (q[qi], c[ci]) as the match tables store them
    (`pair_raw`: by index; copying the pairs' vectors first cost 0.13 s of compare's
    ~0.6 s with FV on 2 000 grocery photos, 12 000 pairs)."""
    bits, cos, same = pair_raw(q, c, qi, ci)
    sims = 1.0 - bits.astype(np.float32) / HASH_BITS
    dfv = None if cos is None else np.maximum(cos, 0.0).astype(np.float32)
    return {"dah": sims[:, 0], "ddh": sims[:, 1], "dph": sims[:, 2], "dfv": dfv,
            "same_bytes": same}


def _match_table(queries: SignatureArrays, catalogue: SignatureArrays, qi: np.ndarray,
                 ci: np.ndarray, score: np.ndarray) -> pa.Table:
    """MATCH_COLUMNS of the pairs (queries[qi], catalogue[ci]), components in chunks."""
    order = np.lexsort((catalogue.rows[ci], -score, queries.rows[qi]))
    qi, ci, score = qi[order], ci[order], score[order]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in ("dah", "ddh", "dph", "dfv",
                                                          "same_bytes")}
    for s in range(0, len(qi), 65536):
        comp = components(queries, catalogue, qi[s:s + 65536], ci[s:s + 65536])
        for name in parts:
            value = comp[name]
            if value is not None:
                parts[name].append(value)

    def col(name: str, dtype: type) -> np.ndarray:
        return np.concatenate(parts[name]) if parts[name] else np.zeros(0, dtype)

    dfv = (pa.array(col("dfv", np.float32), pa.float32())
           if queries.fv is not None and catalogue.fv is not None
           else pa.nulls(len(score), pa.float32()))
    return pa.table(
        {
            "image_id": pa.array(queries.ids[qi].tolist(), pa.string()),
            "match_image_id": pa.array(catalogue.ids[ci].tolist(), pa.string()),
            "score": pa.array(score.astype(np.float32)),
            "dah": pa.array(col("dah", np.float32)),
            "ddh": pa.array(col("ddh", np.float32)),
            "dph": pa.array(col("dph", np.float32)),
            "dfv": dfv,
            "same_bytes": pa.array(col("same_bytes", bool)),
        },
        schema=MATCH_COLUMNS,
    )
