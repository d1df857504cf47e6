"""DDL of the backend tables, and seeding of the NextPage source tables (tests, demo)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from npimage.backend.arrowpg import copy_parquet
from npimage.backend.connection import Db, connection, transaction
from npimage.bands import bands_table
from npimage.schemas import CATALOG
from npimage.sqlfiles import load_sql, migrations, schema_version

log = logging.getLogger(__name__)

#: Columns of the catalog contract that the source tables hold (no size_bytes).
_SEED = pa.schema([f for f in CATALOG if f.name != "size_bytes"])


def apply_schema(db: Db) -> int:
    """Create or migrate the npimage_* tables to this npimage's schema version; return it.

    Absent tables are created from schema.sql (version 1, the release of commit 3b8234e);
    then every migration sql/postgres/migrations/NNNN_*.sql above the recorded version runs
    in order, in place, in the same transaction, under an advisory lock (racing processes
    migrate once). npimage_band is set from npimage.bands (every label, `weak` last).

    Idempotent, and safe while loads run: once the tables exist at the current version it
    runs no DDL (which would lock the tables that loads write).
    """
    latest = schema_version("postgres")
    with connection(db) as conn, transaction(conn) as cur:
        cur.execute(load_sql("postgres", "schema_missing"))
        missing = bool(cur.fetchall())
        if missing or _version(cur) < latest:
            cur.execute(load_sql("postgres", "schema_lock"))
            version = _version(cur)  # another process may have migrated meanwhile
            cur.execute(load_sql("postgres", "schema"))
            for number, name in migrations("postgres"):
                if number > version:
                    cur.execute(load_sql("postgres", name))
                    cur.execute(load_sql("postgres", "schema_version_set"), {"version": number})
            if version < latest:
                log.info("backend tables at schema version %d (were %d)", latest, version)
        table = bands_table().to_pylist()  # the named bands, then `weak` (lower 0)
        for rank, row in enumerate(table, start=1):
            cur.execute(load_sql("postgres", "band_upsert"),
                        {"band": row["band"], "lower_bound": row["lower"], "rank": rank})
    return latest


def _version(cur: Any) -> int:
    """Schema version of the npimage_* tables: 0 none, 1 the release of 3b8234e, else N."""
    cur.execute(load_sql("postgres", "schema_version_get"))
    versioned, created = cur.fetchone()
    if not versioned:
        return 1 if created else 0
    cur.execute(load_sql("postgres", "schema_version_max"))
    return int(cur.fetchone()[0])


def create_source_schema(db: Db) -> None:
    """Create NextPage's np_* tables if absent (they exist already in a real backend)."""
    with connection(db) as conn, transaction(conn) as cur:
        cur.execute(load_sql("postgres", "source_schema"))


def seed_source(db: Db, catalog: Path, batch_rows: int = 50_000) -> int:
    """Upsert a catalog Parquet into the np_* tables (creating them if absent).

    Products, references (one per product and GTIN) and clients are created as needed;
    updated_at takes the catalogue's modified_at. For tests and the demo: it turns any
    catalogue into a NextPage-like source. Returns the number of image rows sent.
    """
    with connection(db) as conn, transaction(conn) as cur:
        cur.execute(load_sql("postgres", "source_schema"))
        cur.execute(load_sql("postgres", "source_stage"))
        n = copy_parquet(cur, catalog, _SEED, load_sql("postgres", "source_copy"), batch_rows)
        cur.execute(load_sql("postgres", "source_upsert"))
    return n


def list_clients(db: Db, active_only: bool = True) -> list[str]:
    """Client ids of np_client (the active ones by default), sorted."""
    with connection(db) as conn, transaction(conn) as cur:
        cur.execute(load_sql("postgres", "client_list"), {"active_only": active_only})
        return [row[0] for row in cur.fetchall()]
