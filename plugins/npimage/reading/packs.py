"""What one picture's pack says (its GTINs and printed amounts), and how two packs differ.

`compare_packs(a, b)` is what the verification of close pairs asks: two pictures that
look alike but whose codes or printed strengths disagree show different products.
It only speaks when both sides were read: a missing read is no evidence either way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from npimage.reading.quantities import Quantity

#: Dimensions that state a product's strength or content (not a pack's size in mm).
STRENGTH_DIMENSIONS = ("mass", "volume", "percent", "iu", "units", "amount", "equivalents",
                       "gauge")


@dataclass(frozen=True)
class PackReading:
    """The codes and amounts read on one picture."""

    gtins: frozenset[str] = frozenset()
    quantities: tuple[Quantity, ...] = field(default=())

    def strengths(self) -> dict[str, set[tuple]]:
        """Base amounts per dimension (mass, volume, percent, mass/ml, …)."""
        out: dict[str, set[tuple]] = {}
        for q in self.quantities:
            dim, v, v2 = q.base
            if dim.split("/")[0] in STRENGTH_DIMENSIONS:
                out.setdefault(dim, set()).add((v, v2))
        return out


def _show(qs: Iterable[Quantity], dim: str) -> str:
    return ", ".join(sorted({str(q) for q in qs if q.dimension == dim}))


def compare_packs(a: PackReading, b: PackReading) -> list[str]:
    """Reasons why two pictures show different products; [] when nothing read disagrees.

    'GTIN differs: A vs B' when both carry GTINs and share none; 'strength differs:
    5 mg vs 10 mg' for each dimension read on both sides whose amounts share none
    (1 g and 1000 mg are the same amount).
    """
    reasons = []
    if a.gtins and b.gtins and not a.gtins & b.gtins:
        reasons.append(f"GTIN differs: {', '.join(sorted(a.gtins))} vs "
                       f"{', '.join(sorted(b.gtins))}")
    sa, sb = a.strengths(), b.strengths()
    for dim in sorted(sa.keys() & sb.keys()):
        if not sa[dim] & sb[dim]:
            reasons.append(f"strength differs: {_show(a.quantities, dim)} vs "
                           f"{_show(b.quantities, dim)}")
    return reasons


def quantities_of_json(text: str | None) -> tuple[Quantity, ...]:
    """Quantities of an image_text row's `quantities` JSON column."""
    if not text:
        return ()
    return tuple(Quantity(d["value"], d["unit"], d.get("value2"), d.get("per"), d.get("text", ""))
                 for d in json.loads(text))


def load_pack_readings(image_codes: Path | None, image_text: Path | None,
                       ids: Iterable[str] | None = None) -> dict[str, PackReading]:
    """PackReading per image_id from a run's image_codes.parquet / image_text.parquet."""
    wanted = set(ids) if ids is not None else None
    gtins: dict[str, set[str]] = {}
    amounts: dict[str, list[Quantity]] = {}
    if image_codes is not None and Path(image_codes).exists():
        for r in pq.read_table(image_codes, columns=["image_id", "gtin"]).to_pylist():
            if r["gtin"] and (wanted is None or r["image_id"] in wanted):
                gtins.setdefault(r["image_id"], set()).add(r["gtin"])
    if image_text is not None and Path(image_text).exists():
        for r in pq.read_table(image_text, columns=["image_id", "quantities"]).to_pylist():
            if wanted is None or r["image_id"] in wanted:
                amounts.setdefault(r["image_id"], []).extend(quantities_of_json(r["quantities"]))
    return {i: PackReading(frozenset(gtins.get(i, ())), tuple(amounts.get(i, ())))
            for i in gtins.keys() | amounts.keys()}
