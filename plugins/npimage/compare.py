"""Compare: N query images against M catalogue images, top-k per query above a threshold.

Candidates first, then scores. The catalogue is walked in blocks of `block_size` rows
against blocks of queries, so memory is bounded by the block sizes, never by N x M:
- each block's score matrix comes from XOR + popcount over the packed 64-bit hashes, read
  through the scorer's lookup tables, and, with FV on, one matrix product of unit vectors
  (BLAS) through its calibration curve; identical bytes (sha256 + size)
  score 1.0; an image never matches itself;
- only the block's top-k per query above the threshold survive, and the survivors of all
  blocks are reduced to the final top-k;
- every component (dah, ddh, dph, dfv, same_bytes) is then computed for the survivors only.
Ties are broken by catalogue row (signatures are sorted by image_id), so the result does
not depend on how the catalogue is split into blocks or shards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from npimage.hashing import HASH_BITS
from npimage.scoring import Scorer

#: Scores are rounded to this many decimals so that ties are exact across block shapes.
SCORE_DECIMALS = 6

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
    fv: np.ndarray | None  # float32 (n, d), unit rows, or None when FV is off

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: np.ndarray) -> SignatureArrays:
        """The rows `idx` of these arrays."""
        return SignatureArrays(self.ids[idx], self.rows[idx], self.sha[idx], self.size[idx],
                               self.hashes[idx], None if self.fv is None else self.fv[idx])


def _fv_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """(n, d) float32 matrix of a list<float16> column with no nulls, rows re-normalised."""
    arr = column.combine_chunks()
    if arr.null_count:
        raise ValueError(
            f"{arr.null_count} signature(s) lack a feature vector although FV is on; "
            "rerun in full mode or with fv off")
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    mat = values.reshape(len(arr), -1) if len(arr) else np.zeros((0, 1), np.float32)
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    return mat / np.where(norms > 0, norms, 1.0)


def arrays_from_table(table: pa.Table, use_fv: bool, first_row: int = 0) -> SignatureArrays:
    """SignatureArrays of a signatures table whose first row is `first_row` of the client's."""
    if use_fv:
        models = pc.unique(table["fv_model"].drop_null()).to_pylist()
        if len(models) > 1:
            raise ValueError(f"feature vectors of different models cannot be compared: {models}")
    sha_hex = table["sha256"].to_pylist()
    return SignatureArrays(
        ids=np.asarray(table["image_id"].to_pylist(), dtype=object),
        rows=np.arange(first_row, first_row + table.num_rows, dtype=np.int64),
        sha=np.array([int(h[:16], 16) for h in sha_hex], dtype=np.uint64).view(np.int64),
        size=table["size_bytes"].to_numpy().astype(np.int64),
        hashes=np.stack([table[c].to_numpy().astype(np.int64) for c in ("ahash", "dhash", "phash")],
                        axis=1).view(np.uint64) if table.num_rows else np.zeros((0, 3), np.uint64),
        fv=_fv_matrix(table["fv"]) if use_fv else None,
    )


def score_block(q: SignatureArrays, c: SignatureArrays, scorer: Scorer) -> np.ndarray:
    """(len(q), len(c)) float32 scores; self pairs get -1 so they never qualify."""
    score = np.zeros((len(q), len(c)), dtype=np.float32)
    for j in range(3):
        bits = np.bitwise_count(q.hashes[:, j, None] ^ c.hashes[None, :, j])
        score += scorer.hash_tables[j][bits]
    if scorer.use_fv and q.fv is not None and c.fv is not None:
        score += scorer.fv_term(q.fv @ c.fv.T)
    same = (q.sha[:, None] == c.sha[None, :]) & (q.size[:, None] == c.size[None, :])
    score[same] = 1.0
    score[q.rows[:, None] == c.rows[None, :]] = -1.0
    return np.round(score, SCORE_DECIMALS)


def _block_survivors(score: np.ndarray, k: int, threshold: float):
    """(query idx, catalogue idx, score) of the pairs that may be in a query's top-k."""
    m = score.shape[1]
    keep = score >= threshold
    if m > k:
        kth = np.partition(score, m - k, axis=1)[:, m - k]
        keep &= score >= kth[:, None]
    qi, ci = np.nonzero(keep)
    return qi, ci, score[qi, ci]


def top_k_per_query(qi: np.ndarray, crow: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best (score desc, catalogue row asc) entries of each query."""
    order = np.lexsort((crow, -score, qi))
    qs = qi[order]
    start = np.searchsorted(qs, qs, side="left")
    return order[(np.arange(len(qs)) - start) < k]


def components(q: SignatureArrays, c: SignatureArrays) -> dict[str, np.ndarray]:
    """Every component of the aligned pairs (q[i], c[i])."""
    sims = 1.0 - np.bitwise_count(q.hashes ^ c.hashes).astype(np.float32) / HASH_BITS
    out = {"dah": sims[:, 0], "ddh": sims[:, 1], "dph": sims[:, 2]}
    out["dfv"] = (np.maximum(np.einsum("ij,ij->i", q.fv, c.fv), 0.0).astype(np.float32)
                  if q.fv is not None and c.fv is not None else None)
    out["same_bytes"] = (q.sha == c.sha) & (q.size == c.size)
    return out


def compare(queries: SignatureArrays, catalogue: SignatureArrays, scorer: Scorer, *,
            top_k: int, threshold: float, block_size: int = 2048, both_ways: bool = False,
            progress: Callable[[int], None] | None = None) -> pa.Table:
    """Top-k matches of every query in the catalogue, with their components (MATCH_COLUMNS).

    With `both_ways`, also the top-k queries of every catalogue image (the same score
    matrix read by columns): an incremental run needs them to update the lists of
    catalogue images that new images now belong in. Pairs are returned once, oriented
    (query, catalogue image).
    """
    found_q, found_c, found_s = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [
        np.zeros(0, np.float32)]
    col_q, col_c, col_s = list(found_q), list(found_c), list(found_s)
    q_block = max(1, min(block_size, 1024))
    for qs in range(0, len(queries), q_block):
        qa = queries.take(np.arange(qs, min(qs + q_block, len(queries))))
        bq, bc, bs = [], [], []
        for cs in range(0, len(catalogue), block_size):
            cidx = np.arange(cs, min(cs + block_size, len(catalogue)))
            score = score_block(qa, catalogue.take(cidx), scorer)
            qi, ci, sc = _block_survivors(score, top_k, threshold)
            bq.append(qi + qs)
            bc.append(ci + cs)
            bs.append(sc)
            if both_ways:
                ci, qi, sc = _block_survivors(score.T, top_k, threshold)
                col_q.append(qi + qs)
                col_c.append(ci + cs)
                col_s.append(sc)
            if progress:
                progress(len(qa) * len(cidx))
        if bq:  # reduce per query block: memory stays ~ q_block x k x catalogue blocks
            qi, ci, sc = np.concatenate(bq), np.concatenate(bc), np.concatenate(bs)
            sel = top_k_per_query(qi, catalogue.rows[ci], sc, top_k)
            found_q.append(qi[sel])
            found_c.append(ci[sel])
            found_s.append(sc[sel])
    if both_ways:
        qi, ci, sc = np.concatenate(col_q), np.concatenate(col_c), np.concatenate(col_s)
        sel = top_k_per_query(ci, queries.rows[qi], sc, top_k)
        found_q.append(qi[sel])
        found_c.append(ci[sel])
        found_s.append(sc[sel])
    qi, ci, sc = np.concatenate(found_q), np.concatenate(found_c), np.concatenate(found_s)
    _, first = np.unique(qi * max(len(catalogue), 1) + ci, return_index=True)
    return _match_table(queries.take(qi[first]), catalogue.take(ci[first]), sc[first])


def _match_table(q: SignatureArrays, c: SignatureArrays, score: np.ndarray) -> pa.Table:
    comp = components(q, c)
    return pa.table(
        {
            "image_id": pa.array(q.ids.tolist(), pa.string()),
            "match_image_id": pa.array(c.ids.tolist(), pa.string()),
            "score": pa.array(score.astype(np.float32)),
            "dah": pa.array(comp["dah"]),
            "ddh": pa.array(comp["ddh"]),
            "dph": pa.array(comp["dph"]),
            "dfv": pa.array(comp["dfv"], pa.float32()) if comp["dfv"] is not None
            else pa.nulls(len(score), pa.float32()),
            "same_bytes": pa.array(comp["same_bytes"]),
        },
        schema=MATCH_COLUMNS,
    )
