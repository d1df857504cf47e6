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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from npimage.matching.scoring import Scorer, Weights, dumps
from npimage.quality.curves import Classes, classes
from npimage.quality.labelled import BAND_NAMES, Labelled, labelled_set, read_run
from npimage.quality.metrics import Metrics, format_metrics, measure
from npimage.quality.options import FitOptions
from npimage.quality.search import search

#: The fit's entry points; its sections live in quality.labelled (the labelled set),
#: quality.pairs (raw components, scores via matching.compare), quality.curves,
#: quality.search (the weight grid), quality.metrics and quality.options.
__all__ = [
    "FitOptions", "FitResult", "Labelled", "Metrics", "fit", "fit_weights", "format_metrics",
    "labelled_set", "measure", "read_run",
]


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
