"""Pair score: a weighted mean of calibrated component similarities, and its bands.

Components, each in [0, 1], stored as the POC defined them: dah, ddh, dph
(1 - hamming/64 of the average, difference and perceptual hashes) and dfv (cosine
similarity of feature vectors, clipped at 0).

The score is the weighted mean of the components after each passes through a monotone
calibration curve (piecewise linear), so that the bands keep the POC's meaning whatever
the component: a hash 4 bits away (a resize, a recompression) still reads as the same
image (>= 0.99), 11 bits away as a retouched one (>= 0.95), while two random pictures
(~32 bits) fall far below the lowest band. Weights are re-normalised over the components
in use, so a run without FV scores on hashes alone. Identical bytes score 1.0.
Weights and curves come from a JSON file (`npimage fit-weights` writes one) or the
defaults below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npimage.config import BANDS
from npimage.hashing import HASH_BITS

COMPONENTS = ("dah", "ddh", "dph", "dfv")
HASH_COMPONENTS = ("dah", "ddh", "dph")

Curve = tuple[tuple[float, float], ...]


def _bits(n: int) -> float:
    """Raw hash similarity of two hashes n bits apart."""
    return 1.0 - n / HASH_BITS


#: Hash calibration: raw similarity (1 - bits/64) -> calibrated, knots at the band limits.
HASH_CURVE: Curve = (
    (0.0, 0.0), (_bits(32), 0.5), (_bits(22), 0.82), (_bits(16), 0.90), (_bits(11), 0.95),
    (_bits(4), 0.99), (1.0, 1.0),
)
#: FV calibration: identity until fitted on labelled pairs.
FV_CURVE: Curve = ((0.0, 0.0), (1.0, 1.0))


def _default_curves() -> dict[str, Curve]:
    return {"dah": HASH_CURVE, "ddh": HASH_CURVE, "dph": HASH_CURVE, "dfv": FV_CURVE}


@dataclass(frozen=True)
class Weights:
    """Weight and calibration curve of each component (weights normalised on use)."""

    dah: float = 0.15
    ddh: float = 0.30
    dph: float = 0.25
    dfv: float = 0.30
    curves: dict[str, Curve] = field(default_factory=_default_curves)
    source: str = "built-in defaults"

    def normalised(self, use_fv: bool) -> dict[str, float]:
        """Weights of the components in use, summing to 1."""
        raw = {c: getattr(self, c) for c in COMPONENTS if use_fv or c != "dfv"}
        total = sum(raw.values())
        if total <= 0:
            raise ValueError("weights must have a positive sum")
        return {c: w / total for c, w in raw.items()}

    def to_json(self) -> str:
        return json.dumps({"weights": {c: getattr(self, c) for c in COMPONENTS},
                           "curves": {c: [list(k) for k in v] for c, v in self.curves.items()}},
                          indent=2)


def load_weights(path: str | Path | None) -> Weights:
    """Weights from a JSON file `{"weights": {...}, "curves": {...}}`, or the defaults."""
    if not path:
        return Weights()
    doc = json.loads(Path(path).read_text())
    values = doc.get("weights", {})
    unknown = (set(values) | set(doc.get("curves", {}))) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"{path}: unknown component names {sorted(unknown)}; use {COMPONENTS}")
    curves = _default_curves()
    for name, knots in doc.get("curves", {}).items():
        xs = [float(x) for x, _ in knots]
        if xs != sorted(xs):
            raise ValueError(f"{path}: curve {name} must have increasing x")
        curves[name] = tuple((float(x), float(y)) for x, y in knots)
    return Weights(**{c: float(values.get(c, 0.0)) for c in COMPONENTS}, curves=curves,
                   source=str(path))


class Scorer:
    """Vectorised scoring with fixed weights: lookup tables for hashes, a curve for FV."""

    def __init__(self, weights: Weights, use_fv: bool) -> None:
        self.weights = weights.normalised(use_fv)
        self.curves = weights.curves
        self.use_fv = use_fv
        bits = np.arange(HASH_BITS + 1)
        #: (3, 65) float32: weight x calibrated similarity of a hash pair n bits apart
        self.hash_tables = np.stack([
            self.weights[c] * self.calibrate(c, 1.0 - bits / HASH_BITS)
            for c in HASH_COMPONENTS]).astype(np.float32)

    def calibrate(self, component: str, raw: np.ndarray) -> np.ndarray:
        """Calibrated similarity of raw component values (piecewise linear curve)."""
        xs, ys = zip(*self.curves[component], strict=True)
        return np.interp(raw, xs, ys).astype(np.float32)

    def fv_term(self, cos: np.ndarray) -> np.ndarray:
        """Weighted, calibrated FV part of the score for raw cosines (clipped at 0)."""
        return self.weights["dfv"] * self.calibrate("dfv", np.maximum(cos, 0.0))

    def score(self, ham: np.ndarray, cos: np.ndarray | None) -> np.ndarray:
        """Scores from hash distances (..., 3) in bits and cosines (...) or None."""
        s = (self.hash_tables[0][ham[..., 0]] + self.hash_tables[1][ham[..., 1]]
             + self.hash_tables[2][ham[..., 2]])
        if self.use_fv and cos is not None:
            s = s + self.fv_term(cos)
        return s


def band_codes(scores: np.ndarray) -> np.ndarray:
    """Band name of each score ('' below the lowest band), vectorised."""
    out = np.full(scores.shape, "", dtype=object)
    for name, lower in reversed(BANDS):
        out[scores >= lower] = name
    return out
