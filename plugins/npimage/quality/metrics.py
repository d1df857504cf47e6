"""Exact metrics of a scorer on a labelled set (every pair, every candidate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from npimage.matching.scoring import Scorer
from npimage.quality.curves import Classes
from npimage.quality.labelled import BAND_NAMES, Labelled
from npimage.quality.options import TARGETS, FitOptions
from npimage.quality.pairs import Pairs, negative_pairs, pair_scores, positive_pairs, top1_exact
from npimage.quality.search import LOWER, band_recall


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
