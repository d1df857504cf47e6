"""Extract one client's catalogue from NextPage's tables into the catalog contract.

Full mode streams every image row of the client. Incremental mode reads the rows whose
updated_at passed the watermark, plus the current id list with each id's product and
reference (no uri: small); it keeps the previous catalogue's other rows, gives them their
current product and reference, and drops the ids gone from np_image. All reads of one
extract share a REPEATABLE READ snapshot, so the changed rows, the id list and the new
watermark agree. The incremental merge runs in DuckDB over Parquet files: memory stays
bounded whatever the catalogue's size. Output goes to a temporary name, then a rename.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg2.extensions
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from npimage.backend.arrowpg import copy_out_batches, write_batches
from npimage.backend.connection import Db, connection, transaction
from npimage.backend.runs import last_watermark
from npimage.schemas import CATALOG
from npimage.sqlfiles import load_sql

#: Rows re-read before the watermark: a transaction that commits after a run has read
#: past it may carry an older updated_at (now() is its start time). Re-read rows that did
#: not change are not counted as changed.
DEFAULT_OVERLAP = timedelta(minutes=5)
#: DuckDB's memory cap for the incremental merge; it spills to disk past it.
DUCKDB_MEMORY = "1GB"
_KEYS = pa.schema([("image_id", pa.string()), ("product_id", pa.string()),
                   ("reference", pa.string())])
_ID_CHUNK = 10_000  # ids per COPY when fetching rows by id


@dataclass(frozen=True)
class BackendExtract:
    """What an extract wrote and how its catalogue differs from the previous one."""

    catalog: Path
    client_id: str
    mode: str  # the mode used: "incremental" falls back to "full" without a baseline
    n_images: int  # catalogue rows
    n_changed: int  # new ids, or rows whose product, reference, uri or updated_at moved
    n_deleted: int  # ids of the previous catalogue gone from np_image
    n_fetched: int  # rows read in full from PostgreSQL
    since: datetime | None  # incremental lower bound on updated_at (overlap included)
    watermark: datetime | None  # max updated_at of the client's rows; store it on success

    def counts(self) -> dict[str, Any]:
        """The npimage_run fields of this extract, for load_matches' run_info."""
        return {"mode": self.mode, "n_images": self.n_images, "n_changed": self.n_changed,
                "n_deleted": self.n_deleted, "watermark": _iso(self.watermark)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (paths and datetimes as strings), small enough for XCom."""
        data = asdict(self)
        data.update(catalog=str(self.catalog), since=_iso(self.since),
                    watermark=_iso(self.watermark))
        return data


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def extract_catalog(db: Db, client_id: str, out_path: Path,
                    previous_catalog: Path | None = None, incremental: bool = False,
                    batch_rows: int = 10_000, since: datetime | None = None,
                    overlap: timedelta = DEFAULT_OVERLAP) -> BackendExtract:
    """Write the client's catalog Parquet at `out_path` (schema npimage.schemas.CATALOG).

    Incremental mode needs `previous_catalog` (the catalogue of the last successful run)
    and a watermark: `since`, else the one of the client's last successful npimage_run.
    Without either it does a full extract. Counts compare with `previous_catalog` when
    given, in both modes.
    """
    prev = previous_catalog if previous_catalog is not None and previous_catalog.exists() else None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with connection(db) as conn, _work_dir(out_path) as work:
        start = _incremental_start(conn, client_id, prev, since) if incremental else None
        lower = None if start is None else start - overlap
        new = work / "catalog.parquet"
        watermark, n_fetched = _read_snapshot(conn, client_id, prev, lower, work, new,
                                              batch_rows)
        if lower is not None and prev is not None:  # an incremental start needs a previous
            _merge(client_id, prev, work, new, batch_rows)
        counts = _diff(client_id, new, prev, work) if prev else (n_fetched, n_fetched, 0)
        os.replace(new, out_path)
    return BackendExtract(
        catalog=out_path, client_id=client_id, mode="full" if lower is None else "incremental",
        n_images=counts[0], n_changed=counts[1], n_deleted=counts[2], n_fetched=n_fetched,
        since=lower, watermark=watermark,
    )


def _read_snapshot(conn: psycopg2.extensions.connection, client_id: str, prev: Path | None,
                   lower: datetime | None, work: Path, new: Path,
                   batch_rows: int) -> tuple[datetime | None, int]:
    """Everything an extract reads, in one read-only snapshot: (watermark, rows fetched).

    Full (`lower` None): every row into `new`. Incremental: the work files of _merge.
    """
    with transaction(conn) as cur:
        cur.execute(load_sql("postgres", "extract_snapshot"))
        cur.execute(load_sql("postgres", "extract_watermark"), {"client_id": client_id})
        watermark = cur.fetchone()[0]
        if lower is None or prev is None:
            return watermark, _read_rows(cur, client_id, new, batch_rows)
        return watermark, _read_changes(cur, client_id, prev, lower, work, batch_rows)


@contextmanager
def _work_dir(out_path: Path) -> Iterator[Path]:
    """A scratch folder beside the output (same file system, so the final rename is atomic)."""
    work = out_path.parent / f".{out_path.name}.{uuid.uuid4().hex}.work"
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _incremental_start(conn: psycopg2.extensions.connection, client_id: str,
                       prev: Path | None, since: datetime | None) -> datetime | None:
    """Lower bound on updated_at for an incremental extract, or None for a full one.

    The watermark is capped by the newest modified_at of the previous catalogue, so that a
    baseline older than the last successful run can never hide a change.
    """
    if prev is None:
        return None
    mark = since if since is not None else last_watermark(conn, client_id)
    if mark is None:
        return None
    if mark.tzinfo is None:
        mark = mark.replace(tzinfo=UTC)
    newest = _newest_modified(prev, client_id)
    return mark if newest is None else min(mark, newest)


def _newest_modified(catalog: Path, client_id: str) -> datetime | None:
    """Max modified_at of the client's rows in a catalog Parquet, scanned batch by batch."""
    scanner = ds.dataset(catalog).scanner(columns=["modified_at"],
                                          filter=ds.field("client_id") == client_id)
    tops = (pc.max(batch.column(0)).as_py() for batch in scanner.to_batches())
    return max((top for top in tops if top is not None), default=None)


def _read_rows(cur: psycopg2.extensions.cursor, client_id: str, path: Path, batch_rows: int,
               since: datetime | None = None, image_ids: list[str] | None = None) -> int:
    """Write the client's rows (only those updated after `since`, or with `image_ids`, when
    given) into a Parquet file; return their count."""
    params = {"client_id": client_id, "since": since, "image_ids": image_ids}
    batches = copy_out_batches(cur, load_sql("postgres", "extract_catalog"), params, CATALOG,
                               path.with_suffix(".csv"), batch_rows)
    return write_batches(batches, path, CATALOG)


def _read_changes(cur: psycopg2.extensions.cursor, client_id: str, prev: Path,
                  since: datetime, work: Path, batch_rows: int) -> int:
    """Write fresh-*.parquet (rows to take from the database) and keys.parquet (current ids).

    Fresh rows are those updated after `since`, plus the current ids that neither they nor
    the previous catalogue hold. Returns the number of fresh rows.
    """
    n = _read_rows(cur, client_id, work / "fresh-0.parquet", batch_rows, since)
    keys = copy_out_batches(cur, load_sql("postgres", "extract_keys"), {"client_id": client_id},
                            _KEYS, work / "keys.csv", batch_rows)
    write_batches(keys, work / "keys.parquet", _KEYS)
    with _duckdb(work, prev_catalog=prev, keys=work / "keys.parquet",
                 fresh=work / "fresh-0.parquet") as duck:
        missing = duck.sql(load_sql("duckdb", "backend_catalog_missing"),
                           params={"client_id": client_id}).to_arrow_reader(_ID_CHUNK)
        parts = [_read_rows(cur, client_id, work / f"missing-{i}.parquet", batch_rows,
                            image_ids=ids.column(0).to_pylist())
                 for i, ids in enumerate(missing)]
    return n + sum(parts)


@contextmanager
def _duckdb(work: Path, **tables: Path | list[Path]) -> Iterator[Any]:
    """An in-memory DuckDB where each keyword names a table over Parquet file(s)."""
    duck = duckdb.connect(config={"memory_limit": DUCKDB_MEMORY,
                                  "temp_directory": str(work / "duckdb.tmp")})
    try:
        duck.execute(load_sql("duckdb", "backend_session"))
        for name, files in tables.items():
            sources = [str(f) for f in files] if isinstance(files, list) else str(files)
            duck.register(name, ds.dataset(sources))
        yield duck
    finally:
        duck.close()


def _merge(client_id: str, prev: Path, work: Path, out: Path, batch_rows: int) -> None:
    """Write the incremental catalogue: current ids, fresh rows first, else previous rows."""
    fresh = [work / "fresh-0.parquet", *sorted(work.glob("missing-*.parquet"))]
    with _duckdb(work, prev_catalog=prev, keys=work / "keys.parquet", fresh=fresh) as duck:
        reader = duck.sql(load_sql("duckdb", "backend_catalog_merge"),
                          params={"client_id": client_id}).to_arrow_reader(batch_rows)
        write_batches(reader, out, CATALOG)


def _diff(client_id: str, new: Path, prev: Path, work: Path) -> tuple[int, int, int]:
    """(rows, changed, deleted) of the new catalogue against the previous one."""
    with _duckdb(work, prev_catalog=prev, new_catalog=new) as duck:
        row = duck.execute(load_sql("duckdb", "backend_catalog_diff"),
                           {"client_id": client_id}).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def product_names(db: Db, client_id: str, out: Path) -> int:
    """Write the client's product names (np_product.name) to `out` Parquet; the count."""
    from npimage.ingest.extract import PRODUCT_NAMES
    from npimage.storage.parquet_io import write_table

    with connection(db) as conn, transaction(conn) as cur:
        cur.execute(load_sql("postgres", "extract_product_names"), {"client_id": client_id})
        rows = cur.fetchall()
    write_table(pa.table({"product_id": [r[0] for r in rows], "name": [r[1] for r in rows]},
                         schema=PRODUCT_NAMES), out)
    return len(rows)
