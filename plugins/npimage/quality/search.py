"""The weight search: every point of the simplex grid, for every curve shape."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from npimage.bands import BANDS, round_scores
from npimage.matching.scoring import COMPONENTS, Curve
from npimage.quality.curves import Classes, Shape, calibrate, class_quantiles, fit_curves
from npimage.quality.options import MIN_KIND, TARGETS, FitOptions
from npimage.quality.pairs import Candidates

BAND_LOWER = dict(BANDS)
#: Band lower bounds as an array indexed like the bands.
LOWER = np.array([lower for _, lower in BANDS], np.float32)


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
    ps = round_scores(calibrate(data.raw["pos"], curves) @ w.T)
    ps[data.pos.same_bytes] = 1.0
    band, kind = data.pos_band, data.pos_kind
    r_same = band_recall(ps >= LOWER[0], band, kind, 0)
    r_ret = band_recall(ps >= LOWER[1], band, kind, 1)
    ns = round_scores(calibrate(data.raw["neg"][hard], curves) @ w.T)
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
