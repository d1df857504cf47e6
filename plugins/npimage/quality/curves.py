"""Calibration curves of the fit: knots at quantiles of the labelled classes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from npimage.matching.scoring import COMPONENTS, HASH_COMPONENTS, Curve
from npimage.matching.scoring import calibrate as calibrate_curve
from npimage.quality.labelled import BAND_NAMES, Labelled
from npimage.quality.options import FitOptions
from npimage.quality.pairs import (
    Candidates,
    Pairs,
    negative_pairs,
    positive_pairs,
    top1_candidates,
)

#: Smallest gap between two knots of a curve.
EPS = 1e-4


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
    """(m, 4) calibrated components of (m, 4) raw ones (scoring.calibrate per column)."""
    out = np.empty(raw.shape, np.float32)
    for c, name in enumerate(COMPONENTS):
        out[:, c] = calibrate_curve(raw[:, c], curves[name])
    return out
