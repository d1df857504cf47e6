"""Pair score: a weighted mean of calibrated component similarities, and its bands.

Components, each in [0, 1], stored as the POC defined them: dah, ddh, dph
(1 - hamming/64 of the average, difference and perceptual hashes) and dfv (cosine
similarity of feature vectors, clipped at 0).

The score is the weighted mean of the components after each passes through a monotone
calibration curve (piecewise linear), so that the bands keep the POC's meaning whatever
the component: a hash a couple of bits away (a resize, a recompression) reads as the same
image (>= 0.99), a few bits more as a retouched one (>= 0.95), while hashes as far apart
as those of unrelated pictures carry no information (a flat floor) and leave the ranking
of different photos to the feature vectors. Weights are re-normalised over the
components in use. Identical bytes score 1.0.

Weights and curves come from a JSON file that `npimage fit-weights` writes; without one,
from the file shipped in the package, `npimage/weights/default.json` (fitted on real
photos, see docs/QUALITY.md). A file holds two profiles: `weights` + `curves` for runs
with FV, and optionally `hashes_only` (its own `weights` + `curves`) for runs without FV,
since hashes alone must also rank what FV would otherwise rank.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from npimage.matching.hashing import HASH_BITS

COMPONENTS = ("dah", "ddh", "dph", "dfv")
HASH_COMPONENTS = ("dah", "ddh", "dph")

#: The weights file shipped with the package (npimage fit-weights wrote it).
DEFAULT_WEIGHTS_FILE = Path(__file__).resolve().parents[1] / "weights" / "default.json"
DEFAULT_SOURCE = "built-in defaults (npimage/weights/default.json)"

Curve = tuple[tuple[float, float], ...]
#: Identity calibration: what a component gets when a weights file gives no curve for it.
IDENTITY: Curve = ((0.0, 0.0), (1.0, 1.0))


def _parse_curves(doc: dict[str, Any], where: str) -> dict[str, Curve]:
    """Curves of a JSON profile, checked: known component names, increasing x."""
    curves: dict[str, Curve] = {c: IDENTITY for c in COMPONENTS}
    for name, knots in doc.get("curves", {}).items():
        xs = [float(x) for x, _ in knots]
        ys = [float(y) for _, y in knots]
        if xs != sorted(xs) or ys != sorted(ys):
            raise ValueError(f"{where}: curve {name} must have increasing x and y")
        curves[name] = tuple(zip(xs, ys, strict=True))
    return curves


def _parse_profile(doc: dict[str, Any], where: str) -> tuple[dict[str, float], dict[str, Curve]]:
    """(weights, curves) of one profile of a weights file."""
    values = doc.get("weights", {})
    unknown = (set(values) | set(doc.get("curves", {}))) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"{where}: unknown component names {sorted(unknown)}; use {COMPONENTS}")
    return {c: float(values.get(c, 0.0)) for c in COMPONENTS}, _parse_curves(doc, where)


@cache
def _shipped() -> dict[str, Any]:
    """The shipped default weights file, parsed once."""
    doc: dict[str, Any] = json.loads(DEFAULT_WEIGHTS_FILE.read_text(encoding="utf-8"))
    return doc


def _shipped_value(component: str) -> float:
    return _parse_profile(_shipped(), str(DEFAULT_WEIGHTS_FILE))[0][component]


def _shipped_curves() -> dict[str, Curve]:
    return _parse_profile(_shipped(), str(DEFAULT_WEIGHTS_FILE))[1]


def _shipped_hashes_only() -> Weights | None:
    doc = _shipped().get("hashes_only")
    if doc is None:
        return None
    values, curves = _parse_profile(doc, f"{DEFAULT_WEIGHTS_FILE} hashes_only")
    return Weights(**values, curves=curves, source=DEFAULT_SOURCE, hashes_only=None)


@dataclass(frozen=True)
class Weights:
    """Weight and calibration curve of each component (weights normalised on use).

    Every field not given comes from the shipped default file. `hashes_only` is the
    profile used when FV is off; None scores such runs with these weights and curves
    (dfv dropped).
    """

    dah: float = field(default_factory=lambda: _shipped_value("dah"))
    ddh: float = field(default_factory=lambda: _shipped_value("ddh"))
    dph: float = field(default_factory=lambda: _shipped_value("dph"))
    dfv: float = field(default_factory=lambda: _shipped_value("dfv"))
    curves: dict[str, Curve] = field(default_factory=_shipped_curves)
    source: str = DEFAULT_SOURCE
    hashes_only: Weights | None = field(default_factory=_shipped_hashes_only)

    def profile(self, use_fv: bool) -> Weights:
        """The weights that score a run with (use_fv) or without FV."""
        return self if use_fv or self.hashes_only is None else self.hashes_only

    def normalised(self, use_fv: bool) -> dict[str, float]:
        """Weights of the components in use, summing to 1."""
        p = self.profile(use_fv)
        raw = {c: getattr(p, c) for c in COMPONENTS if use_fv or c != "dfv"}
        total = sum(raw.values())
        if total <= 0:
            raise ValueError("weights must have a positive sum")
        return {c: w / total for c, w in raw.items()}

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of these weights (what load_weights reads)."""
        doc: dict[str, Any] = {
            "weights": {c: getattr(self, c) for c in COMPONENTS},
            "curves": {c: [list(k) for k in v] for c, v in self.curves.items()}}
        if self.hashes_only is not None:
            h = self.hashes_only
            doc["hashes_only"] = {
                "weights": {c: getattr(h, c) for c in HASH_COMPONENTS},
                "curves": {c: [list(k) for k in h.curves[c]] for c in HASH_COMPONENTS}}
        return doc

    def to_json(self) -> str:
        return dumps(self.as_dict())


def dumps(doc: dict[str, Any]) -> str:
    """JSON of a weights document, indented, each curve knot `[x, y]` on one line."""
    text = json.dumps(doc, indent=2)
    return re.sub(r"\[\s+(-?[\d.eE+-]+),\s+(-?[\d.eE+-]+)\s+\]", r"[\1, \2]", text) + "\n"


def load_weights(path: str | Path | None) -> Weights:
    """Weights from a JSON file `{"weights": {...}, "curves": {...}[, "hashes_only": {...}]}`.

    Without a path: the shipped default file. Other top-level keys (a fit's record) are
    ignored. A component a profile does not name gets weight 0 and the identity curve.
    """
    if not path:
        return Weights()
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    values, curves = _parse_profile(doc, str(path))
    hashes_only = None
    if "hashes_only" in doc:
        h_values, h_curves = _parse_profile(doc["hashes_only"], f"{path} hashes_only")
        hashes_only = Weights(**h_values, curves=h_curves, source=str(path), hashes_only=None)
    return Weights(**values, curves=curves, source=str(path), hashes_only=hashes_only)


def calibrate(raw: np.ndarray, curve: Curve) -> np.ndarray:
    """float32 calibrated similarity of raw component values through a piecewise linear
    curve (the one calibration: scoring and the weight fit use it)."""
    xs, ys = zip(*curve, strict=True)
    out: np.ndarray = np.interp(raw, xs, ys).astype(np.float32)
    return out


class Scorer:
    """Vectorised scoring with fixed weights: lookup tables for hashes, a curve for FV."""

    def __init__(self, weights: Weights, use_fv: bool) -> None:
        self.weights = weights.normalised(use_fv)
        self.curves = weights.profile(use_fv).curves
        self.use_fv = use_fv
        bits = np.arange(HASH_BITS + 1)
        #: (3, 65) float32: weight x calibrated similarity of a hash pair n bits apart
        self.hash_tables = np.stack([
            self.weights[c] * self.calibrate(c, 1.0 - bits / HASH_BITS)
            for c in HASH_COMPONENTS]).astype(np.float32)

    def calibrate(self, component: str, raw: np.ndarray) -> np.ndarray:
        """Calibrated similarity of raw component values (piecewise linear curve)."""
        return calibrate(raw, self.curves[component])

    def fv_term(self, cos: np.ndarray) -> np.ndarray:
        """Weighted, calibrated FV part of the score for raw cosines (clipped at 0)."""
        return self.weights["dfv"] * self.calibrate("dfv", np.maximum(cos, 0.0))

    def score(self, ham: np.ndarray, cos: np.ndarray | None) -> np.ndarray:
        """Scores from hash distances (..., 3) in bits and cosines (...) or None."""
        s: np.ndarray = (self.hash_tables[0][ham[..., 0]] + self.hash_tables[1][ham[..., 1]]
                         + self.hash_tables[2][ham[..., 2]])
        if self.use_fv and cos is not None:
            s = s + self.fv_term(cos)
        return s

