"""Reviewers' decisions into the backend table npimage_decision (append-only, idempotent)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from npimage.backend.connection import Db, connection, transaction
from npimage.backend.schema import apply_schema
from npimage.sqlfiles import load_sql


def write_decisions(db: Db, rows: Iterable[dict[str, Any]]) -> int:
    """Insert decision rows (npimage.review.store.DECISION_SCHEMA) in one transaction.

    A row whose decision_id is already there is left alone, so re-sending the whole log
    after the backend was unreachable is safe. Returns the number of rows sent.
    """
    rows = list(rows)
    if not rows:
        return 0
    with connection(db) as conn:
        apply_schema(conn)
        with transaction(conn) as cur:
            cur.executemany(load_sql("postgres", "decision_insert"), rows)
    return len(rows)
