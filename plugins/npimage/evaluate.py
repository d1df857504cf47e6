"""Check a published run against ground truth (planted duplicates of the demo, labelled data).

`planted_found` answers the demo's question: of the planted duplicates, how many did the
run find, and how many landed in the band they belong in (or a better one)?
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from npimage.config import BANDS
from npimage.warehouse import connect_readonly

_BAND_RANK = {name: i for i, (name, _) in enumerate(BANDS)}


@dataclass(frozen=True)
class PlantedResult:
    """Per kind of planted duplicate: how many there are, found at all, found in band."""

    kind: str
    total: int
    found: int
    in_band: int


def planted_found(warehouse: Path, client_id: str, truth: Path) -> list[PlantedResult]:
    """Compare a client's image_matches with a truth.csv (image_id,group_id,kind,expected_band).

    The pair checked for each planted image is (group_id, image_id): the original photo
    and its planted copy; found means present in image_matches in both directions.
    """
    with truth.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("expected_band")]
    con = connect_readonly(warehouse)
    try:
        found = {
            (a, b): band for a, b, band in con.execute(
                "SELECT image_id, match_image_id, band FROM image_matches WHERE client_id = $c",
                {"c": client_id}).fetchall()
        }
    finally:
        con.close()
    stats: dict[str, list[int]] = {}
    for r in rows:
        s = stats.setdefault(r["kind"], [0, 0, 0])
        s[0] += 1
        band = found.get((r["group_id"], r["image_id"]))
        if band is not None and (r["image_id"], r["group_id"]) in found:
            s[1] += 1
            if _BAND_RANK[band] <= _BAND_RANK[r["expected_band"]]:
                s[2] += 1
    return [PlantedResult(k, *v) for k, v in sorted(stats.items())]
