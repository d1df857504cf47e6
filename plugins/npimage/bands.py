"""Score bands, the threshold and score precision: the one definition Python and SQL share.

Scores are float32 everywhere (compare computes them so, Parquet, DuckDB and PostgreSQL
store them as FLOAT/real). A limit such as 0.95 has no exact float32 value: the score
float32(0.95) is 0.949999988..., below the double 0.95. So every limit is rounded once
to its float32 value (`as_score`) and every comparison, in NumPy, in Python and in SQL,
uses that value: a score of exactly 0.95 is `retouched` in the warehouse, in the backend
and in `npimage nearest` alike, and a pair at exactly the threshold is kept by compare
and by merge.

Bands, best first (lower limits inclusive):

    same          >= 0.99   same image: copy, recompression, resize
    retouched     >= 0.95   same image, slightly retouched
    very_similar  >= 0.90   very similar product
    similar       >= 0.82   fairly similar
    weak          below 0.82: stored only when the run's threshold is below 0.82

The threshold (default 0.82, the lowest band) decides which pairs are kept; the bands
only label them. A run with `--threshold 0.75` keeps its pairs from 0.75 up and labels
those under 0.82 `weak`. SQL receives the bands as a relation (`bands_table()`, joined
with ASOF on `score >= lower`) and the threshold as the parameter `$threshold`
(`sql_params()`), so no band name or limit is written in a .sql file.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa

#: Scores are rounded once, where they are computed (compare, fitting), to this many
#: decimals: ties are then exact across block shapes and summation orders.
SCORE_DECIMALS = 6


def round_scores(scores: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Scores rounded to SCORE_DECIMALS, as float32 (the one rounding of every score)."""
    return np.round(np.asarray(scores, dtype=np.float32), SCORE_DECIMALS).astype(
        np.float32, copy=False)


def as_score(value: float) -> float:
    """The float32 value of a score or limit, as a Python float (exact in a double)."""
    return float(np.float32(value))


class Band(NamedTuple):
    """A named score band: scores >= `lower` (and below the better band) belong to it.

    A pair (name, lower), so `for name, lower in BANDS` and `dict(BANDS)` work.
    """

    name: str
    lower: float  # nominal limit as written (0.95); comparisons use `limit`

    @property
    def limit(self) -> float:
        """The limit as a float32 score: what every comparison uses."""
        return as_score(self.lower)


#: The named bands, best first.
BANDS: tuple[Band, ...] = (
    Band("same", 0.99),
    Band("retouched", 0.95),
    Band("very_similar", 0.90),
    Band("similar", 0.82),
)

#: Label of a kept pair scoring below the lowest band (only when threshold < 0.82).
WEAK = "weak"

#: What each label means, for help texts and documentation.
MEANINGS: dict[str, str] = {
    "same": "same image: copy, recompression, resize",
    "retouched": "same image, slightly retouched",
    "very_similar": "very similar product",
    "similar": "fairly similar",
    WEAK: "kept only because the threshold is below the lowest band",
}

#: Every label a stored pair can carry, best first.
LABELS: tuple[str, ...] = (*(b.name for b in BANDS), WEAK)

#: The lowest band's limit, and the default threshold.
LOWEST: float = BANDS[-1].lower
DEFAULT_THRESHOLD: float = LOWEST


def check_threshold(threshold: float) -> float:
    """The threshold if it is in (0, 1]; a ValueError naming the range otherwise."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return threshold


def band_of(score: float) -> str:
    """Label of one score: a band name, or WEAK below the lowest band."""
    s = as_score(score)
    for band in BANDS:
        if s >= band.limit:
            return band.name
    return WEAK


def band_codes(scores: npt.ArrayLike) -> npt.NDArray[np.object_]:
    """Label of each score (vectorised; compared as float32 like everywhere else)."""
    s = np.asarray(scores, dtype=np.float32)
    out = np.full(s.shape, WEAK, dtype=object)
    for band in reversed(BANDS):
        out[s >= np.float32(band.lower)] = band.name
    return out


def keep_mask(scores: npt.ArrayLike, threshold: float) -> npt.NDArray[np.bool_]:
    """Which scores reach the threshold (float32 comparison, as in compare and SQL)."""
    return np.asarray(scores, dtype=np.float32) >= np.float32(threshold)


def bands_table() -> pa.Table:
    """The labels and float32 lower limits as a relation for SQL (WEAK's lower is 0).

    Joined with `ASOF LEFT JOIN bands AS b ON score >= b.lower`, each score gets the
    band with the largest lower limit it reaches.
    """
    return pa.table({
        "band": pa.array(LABELS, pa.string()),
        "lower": pa.array([*(b.lower for b in BANDS), 0.0], pa.float32()),
    })


def sql_params(threshold: float) -> dict[str, float]:
    """The SQL parameters of the bands' rules: `$threshold` as a float32 score."""
    return {"threshold": as_score(check_threshold(threshold))}


def limits() -> dict[str, float]:
    """Nominal lower limit of each named band (for run records and documentation)."""
    return {b.name: b.lower for b in BANDS}
