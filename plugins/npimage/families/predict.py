"""Family votes of nearest neighbours, their calibration, and the misfiled flag.

Each image of a product has k nearest images among OTHER products that have a family
(npimage.families.neighbours). Every such neighbour votes for its product's family with
the weight `exp((s - 1) / tau)`, s its similarity in the family space (1 = same direction),
so near neighbours count far more than far ones. A product's votes (all its images
together) give each family f

    p(f) = (S_f + alpha) / (sum_g S_g + alpha * F)

S_f the sum of f's weights, F the number of families: a smoothed share of the votes.
`tau` and `alpha` are fitted by leave-one-product-out on the catalogue itself: every
product with a family is predicted from the others only (its own images never vote for
it), so the catalogue's known families are held-out labels for free, and (tau, alpha)
minimise the negative log-likelihood of those families over a grid. The probabilities are
then calibrated in the sense of a temperature fit; docs/QUALITY.md shows how reliable
they are on data not used for fitting.

A single temperature leaves the top family's share under-confident (a few confidently
wrong products pull tau up), so the same leave-one-out predictions also fit a monotone
map from the top family's vote share to the probability that it is right (equal-count
bins and pool-adjacent-violators: a binned isotonic regression); the other families
share the rest in proportion. That is the `confidence` stored.

A product is flagged `misfiled` when its top family is not its current one and that top
family's confidence is at least `misfiled_at` (default MISFILED_AT, fitted on the
grocery-store train split, measured on its val split: docs/QUALITY.md).

Everything is vectorised over (image, neighbour) pairs with NumPy sorts and bincounts;
the only loop in Python is the small grid of the fit and the evidence text per product.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: Neighbours per image that vote.
K = 10
#: Probability of the top family above which a product filed elsewhere is flagged: the
#: median of the thresholds fitted on the grocery-store train split for precision 0.9
#: (10 seeds of planted misfiles, bench/quality.py --families), rounded; docs/QUALITY.md.
MISFILED_AT = 0.82
#: Grids of the leave-one-out fit.
TAU_GRID = tuple(float(t) for t in np.geomspace(0.005, 1.0, 24))
ALPHA_GRID = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
#: Neighbour images kept per product as the evidence of its prediction.
EVIDENCE = 10


@dataclass(frozen=True)
class Calibration:
    """Parameters of p(f), fitted by leave-one-product-out (see module docstring)."""

    tau: float
    alpha: float
    n_fit: int = 0  # products the fit used
    nll: float = float("nan")  # their mean negative log-likelihood
    #: Monotone map of the top family's vote share to the probability that it is right
    #: (binned isotonic fit on the same leave-one-out predictions); empty = identity.
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "alpha": self.alpha, "n_fit": self.n_fit, "nll": self.nll,
                "knots_x": list(self.knots_x), "knots_y": list(self.knots_y)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(tau=float(data["tau"]), alpha=float(data["alpha"]),
                   n_fit=int(data.get("n_fit", 0)), nll=float(data.get("nll", float("nan"))),
                   knots_x=tuple(data.get("knots_x", ())), knots_y=tuple(data.get("knots_y", ())))

    def confidence(self, share: np.ndarray) -> np.ndarray:
        """Calibrated probability that the top family is right, from its vote share."""
        if not self.knots_x:
            return share
        return np.interp(share, self.knots_x, self.knots_y)


DEFAULT_CALIBRATION = Calibration(tau=0.05, alpha=0.01)


@dataclass(frozen=True)
class Votes:
    """Neighbours of the query images, grouped by the product they vote for.

    q_product: int64 (n,) product code of each query image; sims float32 (n, k);
    fams int64 (n, k) family code of each neighbour (-1: no neighbour).
    """

    q_product: np.ndarray
    sims: np.ndarray
    fams: np.ndarray

    def pairs(self, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(product, family, weight) of every valid vote."""
        valid = self.fams >= 0
        prod = np.broadcast_to(self.q_product[:, None], self.fams.shape)[valid]
        weight = np.exp((self.sims[valid].astype(np.float64) - 1.0) / tau)
        return prod, self.fams[valid], weight


def family_scores(votes: Votes, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summed weights per (product, family) with votes: (product, family, S) sorted by both."""
    prod, fam, weight = votes.pairs(tau)
    if not len(prod):
        return prod, fam, weight
    n_fam = int(fam.max()) + 1
    key = prod * n_fam + fam
    uniq, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, weights=weight)
    return uniq // n_fam, uniq % n_fam, total


def probabilities(votes: Votes, n_families: int, cal: Calibration
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(product, family, p, Z) per (product, family) with votes, and each row's normaliser.

    p of a family without votes is alpha / Z (Z per product, returned per row).
    """
    prod, fam, s = family_scores(votes, cal.tau)
    if not len(prod):
        return prod, fam, s, s
    per_product = np.bincount(prod, weights=s)
    z = per_product[prod] + cal.alpha * n_families
    return prod, fam, (s + cal.alpha) / z, z


def fit_calibration(votes: Votes, truth: np.ndarray, n_families: int,
                    taus: tuple[float, ...] = TAU_GRID,
                    alphas: tuple[float, ...] = ALPHA_GRID) -> Calibration:
    """(tau, alpha) minimising the NLL of the known families `truth` (int64 per product
    code, -1 = unknown) over the products that have one and at least one vote."""
    best = None
    for tau in taus:
        prod, fam, s = family_scores(votes, tau)
        if not len(prod):
            return DEFAULT_CALIBRATION
        per_product = np.bincount(prod, weights=s, minlength=len(truth))
        hit = truth[prod] == fam
        s_true = np.bincount(prod[hit], weights=s[hit], minlength=len(truth))
        known = (truth >= 0) & (per_product > 0)
        for alpha in alphas:
            p = (s_true[known] + alpha) / (per_product[known] + alpha * n_families)
            nll = float(-np.mean(np.log(p)))
            if best is None or nll < best.nll:
                best = Calibration(tau=tau, alpha=alpha, n_fit=int(known.sum()), nll=nll)
    if best is None or not best.n_fit:
        return DEFAULT_CALIBRATION
    prod, fam, p, _ = probabilities(votes, n_families, best)
    top_prod, top_fam, top_p = _top1(prod, fam, p)
    known = truth[top_prod] >= 0
    kx, ky = _monotone_bins(top_p[known], (truth[top_prod] == top_fam)[known])
    return replace(best, knots_x=kx, knots_y=ky)


def _top1(prod: np.ndarray, fam: np.ndarray, p: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each product's most probable family (ties: lowest code) and its probability."""
    order = np.lexsort((fam, -p, prod))
    prod_o = prod[order]
    first = np.r_[True, prod_o[1:] != prod_o[:-1]] if len(prod_o) else np.zeros(0, bool)
    return prod_o[first], fam[order][first], p[order][first]


def _monotone_bins(x: np.ndarray, y: np.ndarray, bins: int = 20, min_per_bin: int = 20
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Knots of a non-decreasing map x -> P(y): equal-count bins, then pool-adjacent-
    violators over the bins' means (a binned isotonic regression; loops over bins only)."""
    n_bins = min(bins, len(x) // min_per_bin)
    if n_bins < 2:
        return (), ()
    order = np.argsort(x, kind="stable")
    parts = np.array_split(order, n_bins)
    xs = [float(x[i].mean()) for i in parts]
    ys = [float((y[i].sum() + 1.0) / (len(i) + 2.0)) for i in parts]  # never 0 or 1
    ws = [len(i) for i in parts]
    pooled: list[list[float]] = []  # [x_mean, y_mean, weight]
    for xm, ym, w in zip(xs, ys, ws, strict=True):
        pooled.append([xm, ym, w])
        while len(pooled) > 1 and pooled[-2][1] > pooled[-1][1]:
            x2, y2, w2 = pooled.pop()
            x1, y1, w1 = pooled.pop()
            pooled.append([(x1 * w1 + x2 * w2) / (w1 + w2), (y1 * w1 + y2 * w2) / (w1 + w2),
                           w1 + w2])
    return tuple(round(b[0], 6) for b in pooled), tuple(round(b[1], 6) for b in pooled)


@dataclass(frozen=True)
class Prediction:
    """Per product code (index): top-3 families and probabilities, current family's p."""

    top: np.ndarray  # int64 (P, 3), -1 = none
    prob: np.ndarray  # float64 (P, 3)
    current_prob: np.ndarray  # float64 (P,), nan when the product has no family
    n_votes: np.ndarray  # int64 (P,)
    misfiled: np.ndarray  # bool (P,)


def _calibrated(prod: np.ndarray, fam: np.ndarray, p: np.ndarray, z: np.ndarray,
                cal: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """(p, z) after the calibration map: a product's top family gets confidence(share),
    its other families share the rest in proportion (z scaled alike for unvoted ones)."""
    if not cal.knots_x or not len(prod):
        return p, z
    top_prod, _, top_p = _top1(prod, fam, p)
    share = np.zeros(int(prod.max()) + 1)
    share[top_prod] = top_p
    conf = np.zeros_like(share)
    conf[top_prod] = cal.confidence(top_p)
    s, c = share[prod], conf[prod]
    rest = np.where(s < 1.0, (1.0 - c) / np.maximum(1.0 - s, 1e-12), 1.0)
    is_top = p >= s  # the top row (ties keep the same share)
    p_new = np.where(is_top, c, p * rest)
    return p_new, z / np.where(rest > 0, rest, 1e-12)


def predict(votes: Votes, current: np.ndarray, n_families: int, cal: Calibration,
            misfiled_at: float = MISFILED_AT) -> Prediction:
    """Top-3 families of every product code 0..len(current)-1 and the misfiled flag.

    `current`: int64 family code of each product (-1 = none). Products without votes get
    no prediction (top -1, prob nan).
    """
    n_products = len(current)
    prod, fam, p, z = probabilities(votes, n_families, cal)
    p, z = _calibrated(prod, fam, p, z, cal)
    top = np.full((n_products, 3), -1, np.int64)
    prob = np.full((n_products, 3), np.nan)
    order = np.lexsort((fam, -p, prod))  # by product, then p descending, then family code
    prod_o, fam_o, p_o = prod[order], fam[order], p[order]
    first = np.searchsorted(prod_o, prod_o, side="left")
    rank = np.arange(len(prod_o)) - first
    keep = rank < 3
    top[prod_o[keep], rank[keep]] = fam_o[keep]
    prob[prod_o[keep], rank[keep]] = p_o[keep]
    n_votes = np.bincount(votes.q_product, weights=(votes.fams >= 0).sum(axis=1),
                          minlength=n_products).astype(np.int64)
    # Probability of the current family: its row when it got votes, else alpha / Z.
    current_prob = np.full(n_products, np.nan)
    z_product = np.full(n_products, np.nan)
    z_product[prod] = z
    has = current >= 0
    current_prob[has] = np.minimum(cal.alpha / z_product[has], 1.0)
    hit = current[prod] == fam
    current_prob[prod[hit]] = p[hit]
    misfiled = (has & (top[:, 0] >= 0) & (top[:, 0] != current)
                & (np.nan_to_num(prob[:, 0]) >= misfiled_at))
    return Prediction(top, prob, current_prob, n_votes, misfiled)


def evidence_json(q_image: np.ndarray, q_product: np.ndarray, sims: np.ndarray,
                  rows: np.ndarray, base_image: np.ndarray, base_product: np.ndarray,
                  base_family: np.ndarray, n_products: int, tau: float,
                  limit: int = EVIDENCE) -> list[str | None]:
    """Per product code, JSON list of its strongest voters: [{image_id, match_image_id,
    match_product_id, family, similarity, weight}], best first, at most `limit`."""
    valid = rows >= 0
    qi = np.broadcast_to(np.arange(len(q_product))[:, None], rows.shape)[valid]
    s = sims[valid]
    r = rows[valid]
    prod = q_product[qi]
    order = np.lexsort((r, -s, prod))
    qi, s, r, prod = qi[order], s[order], r[order], prod[order]
    first = np.searchsorted(prod, prod, side="left")
    keep = (np.arange(len(prod)) - first) < limit
    qi, s, r, prod = qi[keep], s[keep], r[keep], prod[keep]
    out: list[str | None] = [None] * n_products
    bounds: np.ndarray = (np.flatnonzero(np.r_[True, prod[1:] != prod[:-1], True])
                          if len(prod) else np.zeros(0, np.int64))
    weight = np.exp((s.astype(np.float64) - 1.0) / tau)
    for a, b in itertools.pairwise(bounds):
        out[int(prod[a])] = json.dumps([
            {"image_id": str(q_image[qi[t]]), "match_image_id": str(base_image[r[t]]),
             "match_product_id": str(base_product[r[t]]), "family": str(base_family[r[t]]),
             "similarity": round(float(s[t]), 4), "weight": round(float(weight[t]), 6)}
            for t in range(a, b)])
    return out
