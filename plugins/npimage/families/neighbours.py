"""Nearest neighbours for families: a low-dimensional space and an exact top-k search in it.

compare keeps only pairs scoring >= the threshold (0.82): photos of different products of
one family rarely get there, so families need their own neighbours, k per image whatever
their similarity. At 10 000 new images against a 1 000 000-image catalogue that is 10^10
pairs a night, so:

- **Family space.** Each stored feature vector (1280-d, float16) is centred on the
  catalogue's mean, projected on the top `dims` (default 128) principal axes of a seeded
  sample of the catalogue, and scaled to unit length: similarity = dot product, in
  [-1, 1]. Centring removes what every photo shares (the features follow a ReLU6, so raw
  cosines of unrelated photos sit around 0.6) and PCA keeps the directions the catalogue
  varies along. The projection is fitted once per full run (or when the families or the
  model change) and reused by incremental runs, which project only new and changed
  images; the projected vectors (256 bytes an image as float16) are kept with the run,
  so a nightly never re-reads the 2.5 kB vectors of unchanged images.
- **Exact search in that space.** Blocks of queries x catalogue rows: one float32 BLAS
  matrix product per block, then a compiled pass (`_scan_topk`) that keeps each query's k
  best rows, skipping rows of the query's own product and rows without a family. Most
  candidates fail one comparison with the query's current k-th best, so the pass costs
  about one read per pair; memory is bounded by the block sizes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numba import njit

#: Dimensions of the family space.
DIMS = 128
#: Rows sampled to fit the projection (seeded): enough for 128 axes, cheap at 1M images.
FIT_SAMPLE = 20_000
#: Queries and catalogue rows per block of the search (a 1024 x 32768 float32 block = 128 MB).
QUERY_BLOCK = 1024
BASE_BLOCK = 32_768


@dataclass(frozen=True)
class Projection:
    """Centre, project and normalise feature vectors into the family space."""

    mean: np.ndarray  # float32 (d,)
    axes: np.ndarray  # float32 (d, dims)

    @property
    def dims(self) -> int:
        return int(self.axes.shape[1])

    def apply(self, fv: np.ndarray, chunk: int = 65_536) -> np.ndarray:
        """float16 (n, dims) unit rows of the feature vectors `fv` (any float dtype)."""
        out = np.empty((len(fv), self.dims), np.float16)
        for start in range(0, len(fv), chunk):
            x = (fv[start:start + chunk].astype(np.float32) - self.mean) @ self.axes
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            out[start:start + chunk] = x / np.where(norms > 0, norms, 1.0)
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "axes": self.axes}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Projection:
        return cls(np.asarray(arrays["mean"], np.float32), np.asarray(arrays["axes"], np.float32))


def fit_projection(fv: np.ndarray, dims: int = DIMS, sample: int = FIT_SAMPLE,
                   seed: int = 0) -> Projection:
    """PCA of a seeded sample of the rows of `fv` (rows unit length, as stored)."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(fv), size=min(sample, len(fv)), replace=False))
    x = fv[rows].astype(np.float32)
    mean = x.mean(axis=0)
    x -= mean
    # Eigenvectors of the d x d covariance: cheaper than an SVD of the sample for d << n.
    values, vectors = np.linalg.eigh(x.T @ x)
    order = np.argsort(values)[::-1][:min(dims, x.shape[1])]
    return Projection(mean.astype(np.float32), vectors[:, order].astype(np.float32))


@njit(nogil=True, cache=True)
def _lowest(row):  # pragma: no cover - compiled by Numba
    """(slot, value) of the smallest entry of a running top-k row."""
    lo = 0
    for t in range(1, row.shape[0]):
        if row[t] < row[lo]:
            lo = t
    return lo, row[lo]


@njit(nogil=True, cache=True)
def _scan_topk(sims, q_group, b_group, b_ok, offset, best_val, best_idx):  # pragma: no cover
    """Merge the rows of a (nq, nb) block of similarities into each query's top-k.

    Skips catalogue rows of the query's own group (product) and rows with b_ok false.
    best_val/best_idx (nq, k) hold the running top-k, unsorted; free slots are -inf.
    `offset` turns block columns into catalogue rows.
    """
    nq, nb = sims.shape
    for i in range(nq):
        lo, low = _lowest(best_val[i])
        g = q_group[i]
        for j in range(nb):
            s = sims[i, j]
            if s > low and b_ok[offset + j] and b_group[offset + j] != g:
                best_val[i, lo] = s
                best_idx[i, lo] = offset + j
                lo, low = _lowest(best_val[i])


def top_k(queries: np.ndarray, q_group: np.ndarray, base: np.ndarray, b_group: np.ndarray,
          b_ok: np.ndarray, k: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k most similar catalogue rows of another group, best first.

    queries (nq, p) and base (nb, p): unit rows of the family space (float16 or float32).
    q_group / b_group: int64 group (product) codes; b_ok: bool, rows that may be returned.
    Returns (similarity float32 (nq, k), row int64 (nq, k)); missing neighbours are
    (-inf, -1). Exact (every pair is looked at), ties broken by the order of the scan.
    """
    nq = len(queries)
    best_val = np.full((nq, k), -np.inf, np.float32)
    best_idx = np.full((nq, k), -1, np.int64)
    q_group = np.ascontiguousarray(q_group, np.int64)
    b_group = np.ascontiguousarray(b_group, np.int64)
    b_ok = np.ascontiguousarray(b_ok, np.bool_)

    q32 = np.ascontiguousarray(queries, np.float32)
    blocks = [slice(s, s + QUERY_BLOCK) for s in range(0, nq, QUERY_BLOCK)]

    def scan(qs: slice, block: np.ndarray, start: int) -> None:
        sims = q32[qs] @ block.T  # BLAS (multi-threaded); the scan releases the GIL
        _scan_topk(sims, q_group[qs], b_group, b_ok, start, best_val[qs], best_idx[qs])

    # Catalogue blocks outside, query blocks inside: each catalogue row is read from
    # memory and converted to float32 once, whatever the number of queries.
    pool = ThreadPoolExecutor(threads) if threads > 1 and len(blocks) > 1 else None
    try:
        for start in range(0, len(base), BASE_BLOCK):
            block = np.ascontiguousarray(base[start:start + BASE_BLOCK], np.float32)
            if pool is None:
                for qs in blocks:
                    scan(qs, block, start)
            else:
                list(pool.map(lambda qs, b=block, s=start: scan(qs, b, s), blocks))
    finally:
        if pool is not None:
            pool.shutdown()
    order = np.argsort(-best_val, axis=1, kind="stable")
    return (np.take_along_axis(best_val, order, axis=1),
            np.take_along_axis(best_idx, order, axis=1))
