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

A product is flagged `misfiled` when its top family is not its current one and that top
family's probability is at least `misfiled_at` (default MISFILED_AT, fitted on the
grocery-store train split, measured on its val split: docs/QUALITY.md).

Everything is vectorised over (image, neighbour) pairs with NumPy sorts and bincounts;
the only loop in Python is the small grid of the fit and the evidence text per product.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np

#: Neighbours per image that vote.
K = 10
#: Probability of the top family above which a product filed elsewhere is flagged.
MISFILED_AT = 0.9
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

    def to_dict(self) -> dict[str, float | int]:
        return {"tau": self.tau, "alpha": self.alpha, "n_fit": self.n_fit, "nll": self.nll}


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
    return best if best is not None and best.n_fit else DEFAULT_CALIBRATION


@dataclass(frozen=True)
class Prediction:
    """Per product code (index): top-3 families and probabilities, current family's p."""

    top: np.ndarray  # int64 (P, 3), -1 = none
    prob: np.ndarray  # float64 (P, 3)
    current_prob: np.ndarray  # float64 (P,), nan when the product has no family
    n_votes: np.ndarray  # int64 (P,)
    misfiled: np.ndarray  # bool (P,)


def predict(votes: Votes, current: np.ndarray, n_families: int, cal: Calibration,
            misfiled_at: float = MISFILED_AT) -> Prediction:
    """Top-3 families of every product code 0..len(current)-1 and the misfiled flag.

    `current`: int64 family code of each product (-1 = none). Products without votes get
    no prediction (top -1, prob nan).
    """
    n_products = len(current)
    prod, fam, p, z = probabilities(votes, n_families, cal)
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
    current_prob[has] = cal.alpha / z_product[has]
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
    bounds = np.flatnonzero(np.r_[True, prod[1:] != prod[:-1], True]) if len(prod) else []
    weight = np.exp((s.astype(np.float64) - 1.0) / tau)
    for a, b in itertools.pairwise(bounds):
        out[int(prod[a])] = json.dumps([
            {"image_id": str(q_image[qi[t]]), "match_image_id": str(base_image[r[t]]),
             "match_product_id": str(base_product[r[t]]), "family": str(base_family[r[t]]),
             "similarity": round(float(s[t]), 4), "weight": round(float(weight[t]), 6)}
            for t in range(a, b)])
    return out
