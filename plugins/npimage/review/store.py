"""Reviewers' decisions: an append-only log of small Parquet files under the data dir.

Decisions are made at any time by people, not by runs, so they live apart from the run
files and the warehouse tables that every publish replaces:

    <data_dir>/decisions/<client>/<decided_at>-<decision_id>.parquet   (one row each)

A file is written under a temporary name and renamed, so a reader never sees half a
decision, and two reviewers (or the Airflow web server and a standalone server) never
contend for a lock. Nothing is ever rewritten: the decision in force for a pair is the
latest one (`latest_sql`), and the history stays. The warehouse exposes the log as the
view `decisions` (`attach_view`), the merge step reads it to flag rejected pairs, and
the backend receives a copy (`npimage_decision`).

This module imports neither FastAPI nor Airflow: the pipeline's merge step uses it.
"""

from __future__ import annotations

import csv
import io
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from npimage.bands import BANDS, LABELS
from npimage.storage.parquet_io import write_table
from npimage.storage.runs import safe_name

#: What a reviewer can say about a pair.
DECISIONS = {
    "merge": "same product: merge",
    "not_same": "not the same",
    "keep": "keep this image",
    "skip": "skip",
}
#: What a decision is about: a pair of images, or a pair of products.
KINDS = ("image", "product")

DECISION_SCHEMA = pa.schema([
    ("decision_id", pa.string()),
    ("client_id", pa.string()),
    ("kind", pa.string()),           # image | product
    ("item_id", pa.string()),        # the smaller id of the pair
    ("match_id", pa.string()),       # the larger id of the pair
    ("decision", pa.string()),       # merge | not_same | keep | skip
    ("keep_id", pa.string()),        # the image to keep (decision "keep"), else null
    ("band", pa.string()),           # the pair's band when decided
    ("score", pa.float32()),         # the pair's score when decided
    ("dah", pa.float32()),
    ("ddh", pa.float32()),
    ("dph", pa.float32()),
    ("dfv", pa.float32()),
    ("run_id", pa.string()),         # the published run the reviewer was looking at
    ("decided_by", pa.string()),
    ("decided_at", pa.timestamp("us", tz="UTC")),
    ("origin", pa.string()),         # airflow | standalone | import
    ("note", pa.string()),
])

_EMPTY = "_schema.parquet"  # an empty file, so the glob of a log never matches nothing


@dataclass(frozen=True)
class Decision:
    """One reviewer's decision about one pair, as recorded."""

    client_id: str
    kind: str
    item_id: str
    match_id: str
    decision: str
    decided_by: str
    run_id: str | None = None
    band: str | None = None
    score: float | None = None
    components: dict[str, float | None] | None = None
    keep_id: str | None = None
    origin: str = "standalone"
    note: str | None = None

    def validate(self) -> None:
        """Raise ValueError when the decision cannot be recorded as given."""
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {sorted(DECISIONS)}, got {self.decision!r}")
        if not self.item_id or not self.match_id or self.item_id == self.match_id:
            raise ValueError("a decision needs two different ids")
        if self.decision == "keep" and self.keep_id not in (self.item_id, self.match_id):
            raise ValueError("decision 'keep' needs keep_id, one of the pair's two images")
        if self.decision == "keep" and self.kind != "image":
            raise ValueError("decision 'keep' is about an image pair")
        if self.band is not None and self.band not in LABELS:
            raise ValueError(f"unknown band {self.band!r}")
        if not self.decided_by:
            raise ValueError("a decision needs the name of who decided")


def log_dir(data_dir: Path, client_id: str | None = None) -> Path:
    """The decisions folder of the data dir, or of one client in it."""
    root = Path(data_dir) / "decisions"
    return root if client_id is None else root / safe_name(client_id)


def _ensure_seed(data_dir: Path) -> Path:
    """The empty seed file (written once) that keeps every glob of the log non-empty."""
    seed = log_dir(data_dir) / _EMPTY
    if not seed.exists():
        write_table(DECISION_SCHEMA.empty_table(), seed)
    return seed


def record(data_dir: Path, d: Decision, now: datetime | None = None) -> dict[str, Any]:
    """Append one decision to the client's log; returns the row written."""
    d.validate()
    a, b = sorted((d.item_id, d.match_id))
    comps = d.components or {}
    when = now or datetime.now(UTC)
    row = {
        "decision_id": uuid.uuid4().hex, "client_id": d.client_id, "kind": d.kind,
        "item_id": a, "match_id": b, "decision": d.decision, "keep_id": d.keep_id,
        "band": d.band, "score": d.score,
        **{k: comps.get(k) for k in ("dah", "ddh", "dph", "dfv")},
        "run_id": d.run_id, "decided_by": d.decided_by, "decided_at": when,
        "origin": d.origin, "note": d.note,
    }
    _ensure_seed(data_dir)
    name = f"{when.strftime('%Y%m%dT%H%M%S%fZ')}-{row['decision_id']}.parquet"
    write_table(pa.Table.from_pylist([row], DECISION_SCHEMA), log_dir(data_dir, d.client_id) / name)
    return row


def log_glob(data_dir: Path) -> str:
    """Glob of every decision file (all clients), for read_parquet."""
    return str(Path(data_dir).resolve() / "decisions" / "**" / "*.parquet")


class _LogCache:
    """Rows of the decision files already read, per folder: a file is read once per
    process (files are never rewritten), so reading a log of thousands of decisions
    costs a directory listing plus the new files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, dict[str, pa.Table]] = {}

    def read(self, folder: Path) -> pa.Table:
        names = sorted(e.name for e in os.scandir(folder)
                       if e.name.endswith(".parquet") and not e.name.startswith(".")
                       ) if folder.is_dir() else []
        with self._lock:
            known = self._tables.setdefault(str(folder.resolve()), {})
            for name in names:
                if name not in known:
                    known[name] = pq.read_table(folder / name).cast(DECISION_SCHEMA)
            tables = [known[n] for n in names]
        if not tables:
            return DECISION_SCHEMA.empty_table()
        return pa.concat_tables(tables)


_CACHE = _LogCache()


def read_log(data_dir: Path, client_id: str) -> pa.Table:
    """Every decision of a client, oldest first (the full history)."""
    table = _CACHE.read(log_dir(data_dir, client_id))
    return table.sort_by([("decided_at", "ascending"), ("decision_id", "ascending")])


#: The decision in force per pair: the latest one. Relation `log` holds DECISION_SCHEMA.
LATEST_SQL = """
SELECT * FROM log
QUALIFY row_number() OVER (PARTITION BY client_id, kind, item_id, match_id
                           ORDER BY decided_at DESC, decision_id DESC) = 1
"""


def latest(data_dir: Path, client_id: str) -> pa.Table:
    """The decision in force for each decided pair of the client (latest wins)."""
    con = duckdb.connect()
    try:
        con.register("log", read_log(data_dir, client_id))
        return con.sql(LATEST_SQL + " ORDER BY kind, item_id, match_id").to_arrow_table()
    finally:
        con.close()


def rejected(data_dir: Path, client_id: str, kind: str) -> pa.Table:
    """Pairs whose decision in force is "not the same": (item_id, match_id, band)."""
    t = latest(data_dir, client_id)
    t = t.filter(pc.and_(pc.equal(t["kind"], kind), pc.equal(t["decision"], "not_same")))
    band = pc.fill_null(t["band"], BANDS[-1][0])  # band unknown: rejected in every band
    return pa.table({"item_id": t["item_id"], "match_id": t["match_id"], "band": band})


EXPORT_COLUMNS = ("decided_at", "decided_by", "kind", "item_id", "match_id", "decision",
                  "keep_id", "band", "score", "dah", "ddh", "dph", "dfv", "run_id", "origin",
                  "note", "decision_id", "client_id")


def to_csv(table: pa.Table, columns: Sequence[str] = EXPORT_COLUMNS) -> str:
    """Decisions as CSV text (header first), times in ISO 8601 UTC."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in table.select(list(columns)).to_pylist():
        writer.writerow(["" if row[c] is None else
                         row[c].isoformat() if isinstance(row[c], datetime) else
                         f"{row[c]:.6g}" if isinstance(row[c], float) else row[c]
                         for c in columns])
    return out.getvalue()


def truth_pairs(data_dir: Path, client_id: str) -> list[tuple[str, str, str]]:
    """Image pairs labelled by the decisions in force, as fit-weights' pairs truth:
    merge/keep -> the band the reviewer confirmed (or "1" when unknown), not_same ->
    "different".

    Skips are not labels. Product decisions are not image labels either (two products
    may be the same while their pictures differ), so only image pairs are returned.
    """
    rows = latest(data_dir, client_id).to_pylist()
    out = []
    for r in rows:
        if r["kind"] != "image" or r["decision"] == "skip":
            continue
        label = "different" if r["decision"] == "not_same" else (r["band"] or "1")
        out.append((r["item_id"], r["match_id"], label))
    return out


def empty_view(con: duckdb.DuckDBPyConnection) -> None:
    """The view `decisions` with no row (a data dir whose log is not readable here)."""
    con.register("_npimage_no_decisions", DECISION_SCHEMA.empty_table())
    con.execute("CREATE OR REPLACE VIEW decisions AS SELECT * FROM _npimage_no_decisions")


def attach_view(con: duckdb.DuckDBPyConnection, data_dir: Path) -> None:
    """(Re)create the warehouse view `decisions` over the log: every decision, history too.

    A view, not a table: the log is written by the review app at any time, and a publish
    (which switches the run tables) never touches it. Called wherever the warehouse's
    views are built (npimage.storage.warehouse).
    """
    _ensure_seed(data_dir)
    glob = log_glob(data_dir).replace("'", "''")
    con.execute(f"CREATE OR REPLACE VIEW decisions AS SELECT * FROM read_parquet('{glob}', "
                "union_by_name = true)")
