"""Raw components of the labelled pairs: positives, pairs of different photos, and the
top-1 candidates of each query, computed in vectorised blocks; their scores come from
the one scoring formula (matching.compare.component_scores)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from npimage.matching.compare import component_scores
from npimage.matching.hashing import HASH_BITS
from npimage.matching.scoring import Scorer
from npimage.quality.labelled import Labelled

#: Rows of the (queries or images) x all-images blocks computed at once.
BLOCK = 256


@dataclass
class Pairs:
    """Raw components of a set of pairs (i, j) of a Labelled set."""

    i: np.ndarray  # int32
    j: np.ndarray  # int32
    bits: np.ndarray  # (m, 3) uint8 hash distances
    cos: np.ndarray  # (m,) float32, cosine clipped at 0 (zeros without FV)
    same_bytes: np.ndarray  # (m,) bool

    def __len__(self) -> int:
        return len(self.i)

    def raw(self) -> np.ndarray:
        """(m, 4) float32 raw components in COMPONENTS order."""
        sims = 1.0 - self.bits.astype(np.float32) / HASH_BITS
        return np.concatenate([sims, self.cos[:, None]], axis=1)

    def take(self, sel: np.ndarray) -> Pairs:
        return Pairs(self.i[sel], self.j[sel], self.bits[sel], self.cos[sel],
                     self.same_bytes[sel])

    @staticmethod
    def concat(parts: list[Pairs]) -> Pairs:
        if not parts:
            return Pairs(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 3), np.uint8),
                         np.zeros(0, np.float32), np.zeros(0, bool))
        return Pairs(*(np.concatenate(x) for x in zip(
            *((p.i, p.j, p.bits, p.cos, p.same_bytes) for p in parts), strict=True)))


def pair_components(ls: Labelled, i: np.ndarray, j: np.ndarray) -> Pairs:
    """Raw components of the aligned pairs (i[k], j[k])."""
    bits = np.bitwise_count(ls.hashes[i] ^ ls.hashes[j]).astype(np.uint8)
    cos = (np.maximum(np.einsum("ij,ij->i", ls.fv[i], ls.fv[j]), 0.0).astype(np.float32)
           if ls.fv is not None else np.zeros(len(i), np.float32))
    same = (ls.sha[i] == ls.sha[j]) & (ls.size[i] == ls.size[j])
    return Pairs(i.astype(np.int32), j.astype(np.int32), bits, cos, same)


def _row_blocks(ls: Labelled, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]]:
    """(rows, bits (b, n, 3) uint8, cos (b, n) float32) of `rows` against every image."""
    for s in range(0, len(rows), BLOCK):
        r = rows[s:s + BLOCK]
        bits = np.bitwise_count(ls.hashes[r][:, None, :] ^ ls.hashes[None, :, :])
        cos = (np.maximum(ls.fv[r] @ ls.fv.T, 0.0) if ls.fv is not None
               else np.zeros((len(r), len(ls)), np.float32))
        yield r, bits.astype(np.uint8), cos.astype(np.float32)


def negative_pairs(ls: Labelled, max_pairs: int, seed: int) -> tuple[Pairs, bool]:
    """Pairs of different photos: every cross-group pair (a uniform sample past
    `max_pairs`), or the truth's explicit negatives. Returns (pairs, sampled)."""
    if ls.group is None:
        assert ls.neg is not None
        return pair_components(ls, *ls.neg), False
    n = len(ls)
    total = n * (n - 1) // 2
    rate = min(1.0, max_pairs / max(total, 1))
    rng = np.random.default_rng(seed)
    parts = []
    for r, bits, cos in _row_blocks(ls, np.arange(n)):
        mask = (np.arange(n)[None, :] > r[:, None]) & (ls.group[None, :] != ls.group[r][:, None])
        if rate < 1.0:
            mask &= rng.random(mask.shape) < rate
        bi, cj = np.nonzero(mask)
        qi = r[bi]
        same = (ls.sha[qi] == ls.sha[cj]) & (ls.size[qi] == ls.size[cj])
        parts.append(Pairs(qi.astype(np.int32), cj.astype(np.int32), bits[bi, cj], cos[bi, cj],
                           same))
    return Pairs.concat(parts), rate < 1.0


def positive_pairs(ls: Labelled) -> Pairs:
    return pair_components(ls, ls.pos[0], ls.pos[1])


@dataclass
class Candidates:
    """Top-1 candidates of the queries, sorted by (query, correct), with segment starts."""

    pairs: Pairs
    query: np.ndarray  # (m,) int32, index into the query list
    correct: np.ndarray  # (m,) bool
    n_queries: int

    def padded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index (segments, slots), query of segment, correct of segment) of the
        (query, correct) runs; empty slots hold len(pairs)."""
        key = self.query.astype(np.int64) * 2 + self.correct
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else key
        lengths = np.diff(np.r_[starts, len(key)])
        slots = int(lengths.max(initial=0))
        idx = np.full((len(starts), slots), len(key), np.int64)
        seg = np.repeat(np.arange(len(starts)), lengths)
        idx[seg, np.arange(len(key)) - starts[seg]] = np.arange(len(key))
        return idx, self.query[starts], self.correct[starts]


def _candidate_mask(ls: Labelled, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(valid, correct) (b, n): candidates of other groups, and of the query's product."""
    assert ls.group is not None  # top-1 needs a groups truth
    valid = ls.group[None, :] != ls.group[r][:, None]
    correct = (ls.product[None, :] == ls.product[r][:, None]) & (ls.product[r][:, None] >= 0)
    return valid, correct & valid


def top1_candidates(ls: Labelled, keep: int) -> Candidates:
    """Each query's `keep` best candidates per component and class (for the search)."""
    queries = np.flatnonzero(ls.query) if ls.group is not None else np.zeros(0, np.int64)
    parts, qs, cs = [], [], []
    for r, bits, cos in _row_blocks(ls, queries):
        valid, correct = _candidate_mask(ls, r)
        chosen = np.zeros(valid.shape, bool)
        values = [-bits[..., c].astype(np.float32) for c in range(3)]
        values += [cos] if ls.fv is not None else []
        for cls in (correct, valid & ~correct):
            for v in values:
                k = min(keep, v.shape[1] - 1)
                top = np.argpartition(np.where(cls, v, -np.inf), -k, axis=1)[:, -k:]
                np.put_along_axis(chosen, top, True, axis=1)
        bi, cj = np.nonzero(chosen & valid)
        qi = r[bi]
        same = (ls.sha[qi] == ls.sha[cj]) & (ls.size[qi] == ls.size[cj])
        parts.append(Pairs(qi.astype(np.int32), cj.astype(np.int32), bits[bi, cj], cos[bi, cj],
                           same))
        qs.append(np.searchsorted(queries, qi).astype(np.int32))
        cs.append(correct[bi, cj])
    pairs = Pairs.concat(parts)
    q = np.concatenate(qs) if qs else np.zeros(0, np.int32)
    c = np.concatenate(cs) if cs else np.zeros(0, bool)
    order = np.lexsort((c, q))
    return Candidates(pairs.take(order), q[order], c[order], len(queries))


def top1_exact(ls: Labelled, scorer: Scorer) -> tuple[float, int]:
    """(share of queries whose best candidate is of their product, queries), exact."""
    queries = np.flatnonzero(ls.query) if ls.group is not None else np.zeros(0, np.int64)
    hits = 0
    for r, bits, cos in _row_blocks(ls, queries):
        valid, correct = _candidate_mask(ls, r)
        s = scorer.score(bits.astype(np.intp), cos if scorer.use_fv else None)
        same = (ls.sha[r][:, None] == ls.sha[None, :]) & (ls.size[r][:, None] == ls.size[None, :])
        s = np.where(same, 1.0, s)
        best_ok = np.where(correct, s, -np.inf).max(axis=1)
        best_no = np.where(valid & ~correct, s, -np.inf).max(axis=1)
        hits += int(np.sum(best_ok > best_no))
    return (hits / len(queries) if len(queries) else float("nan")), len(queries)


def pair_scores(pairs: Pairs, scorer: Scorer) -> np.ndarray:
    """Scores of pairs exactly as compare computes them (compare.component_scores)."""
    return component_scores(pairs.bits, pairs.cos if scorer.use_fv else None,
                            pairs.same_bytes, scorer)
