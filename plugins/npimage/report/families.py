"""Family predictions in the report: the suggestion on product pages, the misfiled tab.

Read from the warehouse table product_family_predictions (absent in warehouses older than
families, or empty when families are unknown: the report then shows no suggestion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import duckdb

from npimage.sqlfiles import load_sql


@dataclass(frozen=True, slots=True)
class Voter:
    """One neighbour image that voted: whose image it is and how similar."""

    image_id: str
    match_image_id: str
    match_product_id: str
    family: str
    similarity: float


@dataclass(slots=True)
class FamilySuggestion:
    """A product's predicted families (top 3), current family and evidence."""

    product_id: str
    family: str | None
    top: list[tuple[str, float]]
    current_confidence: float | None
    misfiled: bool
    n_votes: int
    voters: list[Voter] = field(default_factory=list)


def _has_table(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute("SELECT count(*) FROM information_schema.tables "
                      "WHERE table_name = 'product_family_predictions'").fetchone()
    return bool(row and row[0])


def _row(values: tuple) -> FamilySuggestion:
    (pid, family, f1, c1, f2, c2, f3, c3, current, misfiled, n_votes, evidence) = values
    top = [(f, c) for f, c in ((f1, c1), (f2, c2), (f3, c3)) if f is not None]
    voters = [Voter(e["image_id"], e["match_image_id"], e["match_product_id"], e["family"],
                    e["similarity"]) for e in json.loads(evidence or "[]")]
    return FamilySuggestion(pid, family, top, current, bool(misfiled), n_votes or 0, voters)


def suggestions_for(con: duckdb.DuckDBPyConnection, client_id: str, first: str, last: str
                    ) -> dict[str, FamilySuggestion]:
    """Suggestions of the products whose id is in [first, last] (one query per page set)."""
    if not _has_table(con):
        return {}
    rows = con.execute(load_sql("duckdb", "report_family_predictions"),
                       {"client": client_id, "first": first, "last": last}).fetchall()
    return {r[0]: _row(r) for r in rows}


def misfiled(con: duckdb.DuckDBPyConnection, client_id: str) -> list[FamilySuggestion]:
    """Products flagged possibly misfiled, most confident first."""
    if not _has_table(con):
        return []
    rows = con.execute(load_sql("duckdb", "report_misfiled"), {"client": client_id}).fetchall()
    return [_row(r) for r in rows]
