"""Knobs and targets of the weight fit (npimage.quality.fitting)."""

from __future__ import annotations

from dataclasses import dataclass

#: Issue targets: recall of same-image pairs in `same`, of retouched pairs at >= 0.95,
#: top-1 product accuracy.
TARGETS = {"same": 0.99, "retouched": 0.95, "top1": 0.95}
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
