"""DDL of the backend tables, and seeding of the NextPage source tables (tests, demo)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from npimage.backend.arrowpg import copy_parquet
from npimage.backend.connection import Db, connection, transaction
from npimage.bands import bands_table
from npimage.schemas import CATALOG
from npimage.sqlfiles import load_sql

#: Columns of the catalog contract that the source tables hold (no size_bytes).
_SEED = pa.schema([f for f in CATALOG if f.name != "size_bytes"])


def apply_schema(db: Db) -> None:
    """Create npimage_run, npimage_image_match, npimage_product_match and npimage_band if
    absent, and set npimage_band from npimage.bands (every label, `weak` last).

    Idempotent, and safe while loads run: once the tables exist it runs no DDL (which
    would lock the tables that loads write).
    """
    with connection(db) as conn, transaction(conn) as cur:
        cur.execute(load_sql("postgres", "schema_missing"))
        if cur.fetchall():
            cur.execute(load_sql("postgres", "schema"))
        table = bands_table().to_pylist()  # the named bands, then `weak` (lower 0)
        for rank, row in enumerate(table, start=1):
            cur.execute(load_sql("postgres", "band_upsert"),
                        {"band": row["band"], "lower_bound": row["lower"], "rank": rank})


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
