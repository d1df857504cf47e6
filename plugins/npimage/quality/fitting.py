"""Fit the score's calibration curves and component weights on labelled images.

`npimage fit-weights` (and bench/quality.py) call `fit_weights`: it reads the signatures
of a client's published run and a truth file, computes the raw components of every
labelled pair from the signatures (so pairs below the run's threshold count too), fits
the curves and weights, and returns a Weights (scoring.py) plus a record of how.

Truth, groups format (what bench/quality.py writes), header image_id,group_id and
optionally source, kind, expected_band, product, query:
- group_id: the source photo; images of one group are versions of one photo, any pair of
  different groups is a pair of *different photos* (a negative).
- expected_band (same | retouched | very_similar | similar): the band the pair
  (source, image) must reach; source defaults to group_id (the demo's truth.csv works).
- product: the real product shown (default: the run's product_id); query = 1 marks the
  images whose top-1 product is measured (default: every image whose product appears in
  another group). Top-1 product: among all images of other groups, is the best-scoring
  one of the same product? A ranking over every candidate, not only pairs >= 0.82.
Pairs format (as `npimage evaluate` reads): image_id,match_image_id,label with label a
band name (a positive that must reach it), 1/true (a duplicate: retouched) or 0/false
(a pair of different photos); no top-1 then.

The model (scoring.py): score = weighted mean of calibrated components. The fit:
1. Curves, per component, knots at quantiles of the labelled classes: the lowest 0.5 %
   (FV: 0, 0.5 or 1 %, searched) of same-image pairs -> 0.99, the lowest 1 or 5 %
   (searched) of retouched pairs -> 0.95, of pairs of different products the median ->
   `floor`, the 99.9th percentile -> 0.82 and the 99.99th -> 0.90. For hashes, `floor`
   is flat down to 0 (hashes as far apart as unrelated pictures' say nothing, and must
   not drown the FV's ranking of different photos) and is searched (0.5, 0.65, 0.8); for
   FV the median maps to 0.5 (ReLU6 features: unrelated pictures still have cosines of
   0.3-0.6, the curve pushes them down). Shapes are tried loosest first, ties keep the
   first.
2. Weights: every point of the simplex at `step` (1771 points at 0.05), for every curve
   shape; the best by, in order: fewest pairs of different photos >= 0.99 (the hard
   constraint), most targets met (same-image recall >= 0.99 at 0.99, retouched recall
   >= 0.95 at 0.95, each for all pairs and for each kind of edit; top-1 product
   >= 0.95), largest sum of the margins to the targets, each in units of the target's
   allowance (recall 0.995 against 0.99 is a margin of 0.5), a pair of different photos
   >= 0.95 costing as much as a missed retouch. The top-1 part of the search scores
   each query's 24 best candidates per component and class (right / wrong product); the
   metrics reported for the choice are exact (every candidate).
3. The same for the hashes-only profile (runs without FV), without top-1.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from npimage.bands import BANDS
from npimage.matching.hashing import HASH_BITS
from npimage.matching.scoring import COMPONENTS, HASH_COMPONENTS, Curve, Scorer, Weights, dumps

BAND_NAMES = tuple(name for name, _ in BANDS)
BAND_LOWER = dict(BANDS)
#: Band lower bounds as an array indexed like BAND_NAMES.
LOWER = np.array([lower for _, lower in BANDS], np.float32)
#: Issue targets: recall of same-image pairs in `same`, of retouched pairs at >= 0.95,
#: top-1 product accuracy.
TARGETS = {"same": 0.99, "retouched": 0.95, "top1": 0.95}
_POSITIVE_WORDS = {"1", "true", "yes", "y", "duplicate", "positive"}
_NEGATIVE_WORDS = {"0", "false", "no", "n", "different", "negative", ""}
#: Knot levels of a curve, in order: floor (median of different products), 0.82, 0.90,
#: 0.95, 0.99.
EPS = 1e-4
#: Rows of the (queries or images) x all-images blocks computed at once.
BLOCK = 256
#: Scores are compared with the band limits after rounding, as compare rounds them.
DECIMALS = 6
#: A kind of labelled pairs counts on its own for a recall target from this many pairs.
MIN_KIND = 20


@dataclass(frozen=True)
class FitOptions:
    """Knobs of the fit (defaults: what the shipped weights were fitted with)."""

    step: float = 0.05
    similar_quantile: float = 0.999
    very_similar_quantile: float = 0.9999
    floors: tuple[float, ...] = (0.5, 0.65, 0.8)
    same_quantiles: tuple[float, ...] = (0.005,)
    fv_same_quantiles: tuple[float, ...] = (0.0, 0.005, 0.01)
    retouched_quantiles: tuple[float, ...] = (0.01, 0.05)
    prune: int = 24
    max_negatives: int = 20_000_000
    seed: int = 0


# -- the labelled set --------------------------------------------------------------------

@dataclass
class Labelled:
    """Signatures of the labelled images and what the truth says about them."""

    ids: np.ndarray  # (n,) object
    hashes: np.ndarray  # (n, 3) uint64
    fv: np.ndarray | None  # (n, d) float32 unit rows
    sha: np.ndarray  # (n,) int64
    size: np.ndarray  # (n,) int64
    group: np.ndarray | None  # (n,) int64; None: negatives are `neg` only
    product: np.ndarray  # (n,) int64, -1 unknown
    query: np.ndarray  # (n,) bool
    pos: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # i, j, band index, kind
    neg: tuple[np.ndarray, np.ndarray] | None = None  # explicit negatives (pairs truth)
    dropped: int = 0  # truth images without a signature (rejected by the run)

    def __len__(self) -> int:
        return len(self.ids)

    def restrict(self, keep: np.ndarray) -> Labelled:
        """The images `keep` (bool mask) only, with the labels among them."""
        new = np.full(len(self), -1, np.int64)
        new[keep] = np.arange(int(keep.sum()))
        i, j, b, k = self.pos
        ok = keep[i] & keep[j]
        neg = None
        if self.neg is not None:
            ni, nj = self.neg
            nok = keep[ni] & keep[nj]
            neg = (new[ni[nok]], new[nj[nok]])
        return replace(
            self, ids=self.ids[keep], hashes=self.hashes[keep],
            fv=None if self.fv is None else self.fv[keep], sha=self.sha[keep],
            size=self.size[keep], group=None if self.group is None else self.group[keep],
            product=self.product[keep], query=self.query[keep],
            pos=(new[i[ok]], new[j[ok]], b[ok], k[ok]), neg=neg)


def run_files(data_dir: Path, client_id: str) -> tuple[str, Path]:
    """(run_id, run folder) of the client's last published run."""
    from npimage.storage.runs import safe_name

    client_dir = Path(data_dir) / "clients" / safe_name(client_id)
    pointer = client_dir / "current.json"
    if not pointer.is_file():
        raise ValueError(f"no published run for client {client_id!r} in {data_dir}")
    run_id = json.loads(pointer.read_text())["run_id"]
    return run_id, client_dir / "runs" / safe_name(run_id)


def read_run(data_dir: Path, client_id: str) -> tuple[pa.Table, dict[str, str], str]:
    """(signatures, {image_id: product_id}, run_id) of the client's published run."""
    run_id, run_dir = run_files(data_dir, client_id)
    shards = sorted((run_dir / "signatures").glob("shard-*.parquet"))
    if not shards:
        raise ValueError(f"run {run_id} of {client_id!r} has no signatures in {run_dir}")
    sigs = pa.concat_tables([pq.read_table(p) for p in shards])
    cat = pq.read_table(run_dir / "catalog.parquet", columns=["image_id", "product_id"])
    products = dict(zip(cat["image_id"].to_pylist(), cat["product_id"].to_pylist(),
                        strict=True))
    return sigs, products, run_id


def _codes(values: list[str | None]) -> np.ndarray:
    """Integer codes of strings (-1 for None or empty)."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(v, len(index)) if v else -1 for v in values], np.int64)


def _band_index(label: str, where: str) -> int | None:
    """Index in BAND_NAMES of a positive label, None for a negative one."""
    word = label.strip().lower()
    if word in BAND_NAMES:
        return BAND_NAMES.index(word)
    if word in _POSITIVE_WORDS:
        return BAND_NAMES.index("retouched")
    if word in _NEGATIVE_WORDS:
        return None
    raise ValueError(f"{where}: unknown label {label!r}")


def read_truth_rows(path: Path) -> tuple[str, list[dict[str, str]]]:
    """('groups' | 'pairs', rows) of a truth CSV."""
    with Path(path).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = set(reader.fieldnames or [])
        rows = list(reader)
    if {"image_id", "group_id"} <= header:
        return "groups", rows
    if {"image_id", "match_image_id", "label"} <= header:
        return "pairs", rows
    raise ValueError(f"{path}: header must start with image_id,group_id or "
                     f"image_id,match_image_id,label (got {sorted(header)})")


def labelled_set(sigs: pa.Table, products: dict[str, str], truth: Path) -> Labelled:
    """Join a run's signatures with a truth file (see the module docstring)."""
    from npimage.matching.compare import arrays_from_table, unit_rows

    fmt, rows = read_truth_rows(truth)
    use_fv = sigs.num_rows > 0 and sigs["fv"].null_count == 0
    arrays = arrays_from_table(sigs, use_fv)
    where = {image_id: i for i, image_id in enumerate(arrays.ids)}
    ids = ([r["image_id"] for r in rows] if fmt == "groups" else
           [x for r in rows for x in (r["image_id"], r["match_image_id"])])
    known = [i for i in dict.fromkeys(ids) if i in where]
    local = {image_id: k for k, image_id in enumerate(known)}
    a = arrays.take(np.array([where[i] for i in known], np.int64))
    if fmt == "groups":
        group, product, query, pos = _group_labels(rows, known, local, products)
        neg = None
    else:
        group, product = None, np.full(len(known), -1, np.int64)
        query = np.zeros(len(known), bool)
        pos, neg = _pair_labels(rows, local, str(truth))
    if not pos:
        raise ValueError(f"{truth}: no positive pair with a band among the run's images")
    pi, pj, pb, pk = zip(*pos, strict=True)
    return Labelled(ids=a.ids, hashes=a.hashes, fv=unit_rows(a.fv) if use_fv else None,
                    sha=a.sha, size=a.size, group=group, product=product, query=query,
                    pos=(np.array(pi), np.array(pj), np.array(pb, np.int8),
                         np.array(pk, dtype=object)),
                    neg=neg, dropped=len(set(ids)) - len(known))


Label = tuple[int, int, int, str]  # (source, image, band index, kind)


def _group_labels(rows: list[dict[str, str]], known: list[str], local: dict[str, int],
                  products: dict[str, str]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Label]]:
    """(group, product, query, positives) of a groups truth, for the images `known`."""
    by_id = {r["image_id"]: r for r in rows}
    group = _codes([by_id[i]["group_id"] for i in known])
    product = _codes([by_id[i].get("product") or products.get(i) for i in known])
    pos = [(local[r.get("source") or r["group_id"]], local[r["image_id"]],
            BAND_NAMES.index(r["expected_band"].strip()), r.get("kind") or "")
           for r in rows if (r.get("expected_band") or "").strip()
           and r["image_id"] in local and (r.get("source") or r["group_id"]) in local]
    if rows and "query" in rows[0]:
        query = np.array([(by_id[i].get("query") or "").strip().lower() in _POSITIVE_WORDS
                          for i in known], bool)
    else:
        query = _default_queries(group, product)
    return group, product, query, pos


def _pair_labels(rows: list[dict[str, str]], local: dict[str, int], where: str
                 ) -> tuple[list[Label], tuple[np.ndarray, np.ndarray]]:
    """(positives, negatives) of a pairs truth, among the images in `local`."""
    pos, negs = [], []
    for r in rows:
        if r["image_id"] in local and r["match_image_id"] in local:
            i, j = local[r["image_id"]], local[r["match_image_id"]]
            band = _band_index(r["label"], where)
            if band is None:
                negs.append((i, j))
            else:
                pos.append((i, j, band, r["label"].strip().lower()))
    nij = np.array(negs, np.int64).reshape(-1, 2)
    return pos, (nij[:, 0], nij[:, 1])


def _default_queries(group: np.ndarray, product: np.ndarray) -> np.ndarray:
    """Images whose product is shown by at least two groups (photos)."""
    ok = product >= 0
    pairs = np.unique(np.stack([product[ok], group[ok]], axis=1), axis=0)
    prods, counts = np.unique(pairs[:, 0], return_counts=True)
    multi = np.zeros(int(product.max(initial=-1)) + 2, bool)
    multi[prods[counts >= 2]] = True
    return ok & multi[product]


# -- raw components of pairs -------------------------------------------------------------

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


# -- curves ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """The searched part of the curves: hash floor, quantiles of the 0.99 knots (hashes,
    FV) and of the 0.95 knots."""

    floor: float
    same_quantile: float
    fv_same_quantile: float
    retouched_quantile: float


def curve_knots(xs: list[float], floor: float, is_hash: bool) -> Curve:
    """A calibration curve from its five knot positions (see the module docstring).

    `xs` are the raw values that map to floor, 0.82, 0.90, 0.95 and 0.99; they are made
    strictly increasing (a later knot never moves below an earlier one) and kept below 1.
    """
    xs = list(xs)
    for k in range(1, len(xs)):
        xs[k] = max(xs[k], xs[k - 1] + EPS)
    xs = [min(x, 1.0 - EPS * (len(xs) - k)) for k, x in enumerate(xs)]
    low = floor if is_hash else 0.5
    ys = [low, max(low, 0.82), max(low, 0.90), 0.95, 0.99]
    first = (0.0, floor) if is_hash else (0.0, 0.0)
    return (first, *((round(x, 6), y) for x, y in zip(xs, ys, strict=True)), (1.0, 1.0))


@dataclass
class Classes:
    """Raw components of the labelled classes the curves and the search need."""

    pos: Pairs
    pos_band: np.ndarray  # int8 band index per positive
    pos_kind: np.ndarray  # object, kind per positive
    neg: Pairs
    neg_same_product: np.ndarray  # bool
    cand: Candidates
    sampled: bool
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # pos, neg, cand: (m, 4)

    def __post_init__(self) -> None:
        self.raw = {"pos": self.pos.raw(), "neg": self.neg.raw(),
                    "cand": self.cand.pairs.raw()}


def classes(ls: Labelled, opt: FitOptions) -> Classes:
    """Compute every raw component the fit needs (the expensive, vectorised part)."""
    neg, sampled = negative_pairs(ls, opt.max_negatives, opt.seed)
    same_product = (ls.product[neg.i] == ls.product[neg.j]) & (ls.product[neg.i] >= 0)
    return Classes(positive_pairs(ls), ls.pos[2], ls.pos[3], neg, same_product,
                   top1_candidates(ls, opt.prune), sampled)


def class_quantiles(data: Classes, opt: FitOptions) -> dict[str, dict[str, float]]:
    """Per component, the quantiles of the labelled classes that place the knots."""
    same = (data.pos_band == BAND_NAMES.index("same")) & ~data.pos.same_bytes
    if not same.any():
        raise ValueError("the truth needs pairs expected in band 'same' (other than copies)")
    ret = data.pos_band == BAND_NAMES.index("retouched")
    diff = ~data.neg_same_product
    if not diff.any():
        raise ValueError("the truth needs pairs of different photos (negatives)")
    out = {}
    for c, name in enumerate(COMPONENTS):
        d = data.raw["neg"][diff, c]
        q = dict(zip(("median", "similar", "very_similar"), np.quantile(
            d, [0.5, opt.similar_quantile, opt.very_similar_quantile]).tolist(), strict=True))
        r = data.raw["pos"][ret, c]
        for level in opt.retouched_quantiles:
            q[f"retouched@{level:g}"] = float(np.quantile(r, level)) if len(r) else np.nan
        s = data.raw["pos"][same, c]
        for level in (*opt.same_quantiles, *opt.fv_same_quantiles):
            q[f"same@{level:g}"] = float(np.quantile(s, level))
        out[name] = q
    return out


def fit_curves(quantiles: dict[str, dict[str, float]], shape: Shape,
               opt: FitOptions) -> dict[str, Curve]:
    """Curves of every component for a shape (see the module docstring)."""
    out = {}
    for name in COMPONENTS:
        q = quantiles[name]
        is_hash = name in HASH_COMPONENTS
        same = q[f"same@{(shape.same_quantile if is_hash else shape.fv_same_quantile):g}"]
        ret = q[f"retouched@{shape.retouched_quantile:g}"]
        if np.isnan(ret):
            ret = (q["very_similar"] + same) / 2
        out[name] = curve_knots([q["median"], q["similar"], q["very_similar"], ret, same],
                                shape.floor, is_hash)
    return out


def calibrate(raw: np.ndarray, curves: dict[str, Curve]) -> np.ndarray:
    """(m, 4) calibrated components of (m, 4) raw ones."""
    out = np.empty(raw.shape, np.float32)
    for c, name in enumerate(COMPONENTS):
        xs, ys = zip(*curves[name], strict=True)
        out[:, c] = np.interp(raw[:, c], xs, ys)
    return out


# -- weight search -----------------------------------------------------------------------

def simplex(step: float, use_fv: bool) -> np.ndarray:
    """(g, 4) every weight vector with coordinates multiple of `step` summing to 1."""
    n = round(1 / step)
    dims = 4 if use_fv else 3
    pts = [p for p in itertools.product(range(n + 1), repeat=dims) if sum(p) == n]
    w = np.array(pts, np.float32) / n
    return w if use_fv else np.concatenate([w, np.zeros((len(w), 1), np.float32)], axis=1)


def band_recall(hit: np.ndarray, band: np.ndarray, kind: np.ndarray, b: int) -> np.ndarray:
    """Recall of the pairs expected in band b: the smallest of all of them together and
    of each kind with at least MIN_KIND pairs (a target holds for every kind).

    `hit` is (m,) or (m, g) bool: the pair reaches the band's lower bound.
    """
    sel = band == b
    if not sel.any():
        return np.ones(hit.shape[1:])
    out = hit[sel].mean(axis=0)
    kinds = kind[sel]
    for k in np.unique(kinds):
        mine = kinds == k
        if mine.sum() >= MIN_KIND:
            out = np.minimum(out, hit[sel][mine].mean(axis=0))
    return out


@dataclass
class GridMetrics:
    """Metrics of every weight vector of a grid (arrays of length g)."""

    same: np.ndarray
    retouched: np.ndarray
    neg_same: np.ndarray
    neg_retouched: np.ndarray
    top1: np.ndarray | None
    n_retouched: int  # retouched positives: a different photo >= 0.95 costs a missed one

    def key(self) -> np.ndarray:
        """(g, 4) sort keys, larger is better (see the module docstring)."""
        margins = [(self.same - TARGETS["same"]) / (1 - TARGETS["same"]),
                   (self.retouched - TARGETS["retouched"]) / (1 - TARGETS["retouched"])]
        if self.top1 is not None:
            margins.append((self.top1 - TARGETS["top1"]) / (1 - TARGETS["top1"]))
        m = np.stack(margins, axis=1)
        met = (m >= 0).sum(axis=1)
        false_ret = self.neg_retouched / max(self.n_retouched, 1) / (1 - TARGETS["retouched"])
        return np.stack([-self.neg_same, met, m.sum(axis=1) - false_ret, -self.neg_retouched],
                        axis=1).astype(np.float64)


def hard_negatives(data: Classes, curves: dict[str, Curve]) -> np.ndarray:
    """Indices of the negatives that some weights could score >= 0.95.

    A weighted mean is at most its largest calibrated component, so only negatives with
    a component calibrated >= 0.95 can. Where the 0.95 knots sit depends only on the
    retouched quantile: the curves of the lowest one give a set that serves every shape.
    """
    cal = calibrate(data.raw["neg"], curves)
    return np.flatnonzero((cal.max(axis=1) >= BAND_LOWER["retouched"] - 1e-6)
                          | data.neg.same_bytes)


def grid_metrics(data: Classes, curves: dict[str, Curve], w: np.ndarray, hard: np.ndarray,
                 with_top1: bool) -> GridMetrics:
    """Metrics of every weight vector in `w` (g, 4) for fixed curves, vectorised."""
    ps = np.round(calibrate(data.raw["pos"], curves) @ w.T, DECIMALS)
    ps[data.pos.same_bytes] = 1.0
    band, kind = data.pos_band, data.pos_kind
    r_same = band_recall(ps >= LOWER[0], band, kind, 0)
    r_ret = band_recall(ps >= LOWER[1], band, kind, 1)
    ns = np.round(calibrate(data.raw["neg"][hard], curves) @ w.T, DECIMALS)
    ns[data.neg.same_bytes[hard]] = 1.0
    neg_same = (ns >= LOWER[0]).sum(axis=0)
    top1 = None
    if with_top1 and data.cand.n_queries:  # only where the first key is at its best
        top1 = np.zeros(len(w))
        best = neg_same == neg_same.min()
        top1[best] = _grid_top1(data.cand, calibrate(data.raw["cand"], curves), w[best])
    return GridMetrics(r_same, r_ret, neg_same, (ns >= LOWER[1]).sum(axis=0), top1,
                       int(np.sum(band == 1)))


def _grid_top1(cand: Candidates, cal: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Top-1 product accuracy of every weight vector on the pruned, calibrated candidates.

    Candidates are laid out as a padded (segment, slot) matrix, one segment per (query,
    right or wrong product); the best score of each is a max over slots.
    """
    idx, seg_q, seg_ok = cand.padded()
    cal = np.concatenate([np.where(cand.pairs.same_bytes[:, None], 1.0, cal),
                          np.full((1, cal.shape[1]), -1e3)]).astype(np.float32)
    cells = cal[idx].reshape(-1, cal.shape[1])  # padding reads the last row: -1e3
    hits = np.zeros(len(w), np.int64)
    for s in range(0, len(w), 64):
        best = (cells @ w[s:s + 64].T).reshape(idx.shape[0], idx.shape[1], -1).max(axis=1)
        ok = np.full((cand.n_queries, best.shape[1]), -np.inf, np.float32)
        no = ok.copy()
        ok[seg_q[seg_ok]] = best[seg_ok]
        no[seg_q[~seg_ok]] = best[~seg_ok]
        hits[s:s + 64] = np.sum(ok > no, axis=0)
    return hits / cand.n_queries


@dataclass(frozen=True)
class Choice:
    """The best curves and weights of one profile."""

    shape: Shape
    curves: dict[str, Curve]
    weights: dict[str, float]
    key: tuple[float, ...]


def search(data: Classes, opt: FitOptions, use_fv: bool) -> Choice:
    """Best (shape, weights) of a profile over the shapes and the simplex grid.

    Shapes are tried with the loosest knots first and a later one must be strictly better:
    of equally good fits, the one that leaves edits the widest margin wins.
    """
    w = simplex(opt.step, use_fv)
    quantiles = class_quantiles(data, opt)
    best: Choice | None = None
    fv_qs = opt.fv_same_quantiles if use_fv else opt.fv_same_quantiles[:1]
    shapes = [Shape(*x) for x in itertools.product(
        opt.floors, sorted(opt.same_quantiles), sorted(fv_qs), sorted(opt.retouched_quantiles))]
    low = Shape(opt.floors[0], min(opt.same_quantiles), fv_qs[0], min(opt.retouched_quantiles))
    hard = hard_negatives(data, fit_curves(quantiles, low, opt))
    for shape in shapes:
        curves = fit_curves(quantiles, shape, opt)
        keys = grid_metrics(data, curves, w, hard, use_fv).key()
        k = int(np.lexsort(keys.T[::-1])[-1])
        if best is None or tuple(keys[k]) > best.key:
            weights = {c: round(float(v), 4) for c, v in zip(COMPONENTS, w[k], strict=True)}
            best = Choice(shape, curves, weights, tuple(keys[k]))
    assert best is not None
    return best


# -- exact metrics -----------------------------------------------------------------------

@dataclass
class Metrics:
    """Exact metrics of one scorer on a labelled set."""

    by_kind: dict[str, dict[str, Any]]  # kind -> n, expected band, recall, share per band
    same: float  # recall in `same`, worst of all same-image pairs and each kind (band_recall)
    retouched: float  # recall at >= 0.95 of the retouched pairs, likewise
    same_all: float  # ... of all same-image pairs together
    retouched_all: float
    neg_same: int
    neg_retouched: int
    negatives: int
    neg_bands: dict[str, dict[str, int]]  # same product / different product -> band counts
    top1: float
    queries: int
    worst_negatives: list[tuple[str, str, float]]

    def met(self) -> dict[str, bool]:
        out = {"same": self.same >= TARGETS["same"], "no different photo in same":
               self.neg_same == 0, "retouched": self.retouched >= TARGETS["retouched"]}
        if self.queries:
            out["top1"] = self.top1 >= TARGETS["top1"]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"same_recall": round(self.same_all, 4),
                "same_recall_worst_kind": round(self.same, 4),
                "retouched_recall": round(self.retouched_all, 4),
                "retouched_recall_worst_kind": round(self.retouched, 4),
                "different_photos_in_same": self.neg_same,
                "different_photos_retouched_or_better": self.neg_retouched,
                "different_photo_pairs": self.negatives, "top1_product": round(self.top1, 4),
                "top1_queries": self.queries, "targets_met": self.met()}


def pair_scores(pairs: Pairs, scorer: Scorer) -> np.ndarray:
    """Scores of pairs as compare computes them (identical bytes 1.0, 6 decimals)."""
    s = scorer.score(pairs.bits.astype(np.intp), pairs.cos if scorer.use_fv else None)
    return np.round(np.where(pairs.same_bytes, np.float32(1.0), s), DECIMALS).astype(np.float32)


def _band_counts(scores: np.ndarray) -> dict[str, int]:
    idx = np.searchsorted(-LOWER, -scores, side="left")  # 0 same .. 4 below
    counts = np.bincount(idx, minlength=len(BAND_NAMES) + 1)
    return {**{n: int(counts[k]) for k, n in enumerate(BAND_NAMES)}, "below": int(counts[-1])}


def measure(ls: Labelled, scorer: Scorer, data: Classes | None = None) -> Metrics:
    """Exact metrics of `scorer` on the labelled set (every pair, every candidate)."""
    pos = data.pos if data is not None else positive_pairs(ls)
    neg, negsame = ((data.neg, data.neg_same_product) if data is not None else
                    _neg_with_products(ls))
    ps = pair_scores(pos, scorer)
    band = ls.pos[2]
    by_kind = {}
    for kind in sorted(set(ls.pos[3])):
        sel = ls.pos[3] == kind
        b = int(np.bincount(band[sel]).argmax())
        by_kind[kind] = {"n": int(sel.sum()), "expected": BAND_NAMES[b],
                         "recall": float(np.mean(ps[sel] >= LOWER[band[sel]])),
                         "bands": _band_counts(ps[sel])}
    ns = pair_scores(neg, scorer)
    same, ret = band == 0, band == 1
    worst = np.argsort(-ns)[:10]
    top1, queries = top1_exact(ls, scorer)
    return Metrics(
        by_kind=by_kind,
        same=float(band_recall(ps >= LOWER[0], band, ls.pos[3], 0)),
        retouched=float(band_recall(ps >= LOWER[1], band, ls.pos[3], 1)),
        same_all=float(np.mean(ps[same] >= LOWER[0])) if same.any() else 1.0,
        retouched_all=float(np.mean(ps[ret] >= LOWER[1])) if ret.any() else 1.0,
        neg_same=int(np.sum(ns >= LOWER[0])), neg_retouched=int(np.sum(ns >= LOWER[1])),
        negatives=len(ns),
        neg_bands={"same product": _band_counts(ns[negsame]),
                   "different product": _band_counts(ns[~negsame])},
        top1=top1, queries=queries,
        worst_negatives=[(str(ls.ids[neg.i[k]]), str(ls.ids[neg.j[k]]), float(ns[k]))
                         for k in worst])


def _neg_with_products(ls: Labelled) -> tuple[Pairs, np.ndarray]:
    neg, _ = negative_pairs(ls, FitOptions().max_negatives, FitOptions().seed)
    return neg, (ls.product[neg.i] == ls.product[neg.j]) & (ls.product[neg.i] >= 0)


# -- the whole fit -----------------------------------------------------------------------

@dataclass
class FitResult:
    """Fitted weights, their exact metrics, and the record stored in the weights file."""

    weights: Weights
    metrics: dict[str, Metrics]  # "fv", "hashes only"
    record: dict[str, Any]

    def document(self) -> dict[str, Any]:
        """The weights file: the two profiles and, under "fit", how they were fitted."""
        return {**self.weights.as_dict(), "fit": self.record}

    def to_json(self) -> str:
        """The weights file's text (what `npimage fit-weights --out` writes)."""
        return dumps(self.document())


def fit(ls: Labelled, opt: FitOptions | None = None, source: str = "fitted",
        data: Classes | None = None) -> FitResult:
    """Fit both profiles (FV when the set has vectors, hashes only) on a labelled set.

    `data`: the set's classes(ls, opt) when the caller has computed them already.
    """
    opt = opt or FitOptions()
    data = data if data is not None else classes(ls, opt)
    use_fv = ls.fv is not None
    hashes = search(data, opt, use_fv=False)
    hashes_only = Weights(**hashes.weights, curves=hashes.curves, source=source,
                          hashes_only=None)
    if use_fv:
        best = search(data, opt, use_fv=True)
        weights = Weights(**best.weights, curves=best.curves, source=source,
                          hashes_only=hashes_only)
    else:
        best = hashes
        weights = replace(hashes_only, hashes_only=hashes_only)
    metrics = {"hashes only": measure(ls, Scorer(weights, False), data)}
    if use_fv:
        metrics["fv"] = measure(ls, Scorer(weights, True), data)
    record = {
        "images": len(ls), "truth_images_without_signature": ls.dropped,
        "positives": {BAND_NAMES[b]: int(np.sum(ls.pos[2] == b)) for b in np.unique(ls.pos[2])},
        "different_photo_pairs": len(data.neg), "negatives_sampled": data.sampled,
        "top1_queries": data.cand.n_queries,
        "options": {k: list(v) if isinstance(v, tuple) else v
                    for k, v in opt.__dict__.items()},
        "chosen": {"fv": best.shape.__dict__ if use_fv else None,
                   "hashes_only": {k: v for k, v in hashes.shape.__dict__.items()
                                   if k != "fv_same_quantile"}},
        "metrics": {k: m.as_dict() for k, m in metrics.items()},
    }
    return FitResult(weights, metrics, record)


def fit_weights(data_dir: Path, client_id: str, truth: Path,
                opt: FitOptions | None = None) -> FitResult:
    """Fit on a client's published run and a truth file (`npimage fit-weights`)."""
    sigs, products, run_id = read_run(data_dir, client_id)
    ls = labelled_set(sigs, products, truth)
    result = fit(ls, opt, source=f"fit-weights {client_id} {Path(truth).name}")
    models = sorted({m for m in sigs["fv_model"].to_pylist() if m})
    result.record = {"client": client_id, "run_id": run_id, "truth": str(truth),
                     "fv_model": models[0] if models else None, **result.record}
    return result


def format_metrics(metrics: dict[str, Metrics]) -> str:
    """Plain-text tables of the metrics of each profile."""
    lines = []
    for name, m in metrics.items():
        lines.append(f"{name}:")
        lines.append(f"  {'kind':<20}{'pairs':>9}  {'expected':<13}{'recall':>8}   "
                     + " ".join(f"{b:>12}" for b in (*BAND_NAMES, "below")))
        for kind, k in m.by_kind.items():
            lines.append(f"  {kind:<20}{k['n']:>9}  {k['expected']:<13}{k['recall']:>8.3f}   "
                         + " ".join(f"{k['bands'][b]:>12}" for b in (*BAND_NAMES, "below")))
        for cls, counts in m.neg_bands.items():
            lines.append(f"  {cls:<20}{sum(counts.values()):>9}  {'(different)':<13}{'':>8}   "
                         + " ".join(f"{counts[b]:>12}" for b in (*BAND_NAMES, "below")))
        met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in m.met().items())
        lines.append(f"  same-image recall {m.same_all:.4f} (worst kind {m.same:.4f})  "
                     f"retouched recall {m.retouched_all:.4f} (worst kind {m.retouched:.4f})  "
                     f"different photos in same {m.neg_same}, >= retouched {m.neg_retouched}"
                     + (f"  top-1 product {m.top1:.4f} ({m.queries} queries)"
                        if m.queries else ""))
        lines.append(f"  targets met: {met}")
    return "\n".join(lines)
