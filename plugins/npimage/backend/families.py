"""Product families from the NextPage backend (np_product.family) into families.parquet."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from npimage.backend.arrowpg import copy_out_batches, write_batches
from npimage.backend.connection import Db, connection, transaction
from npimage.schemas import FAMILIES
from npimage.sqlfiles import load_sql


def extract_families(db: Db, client_id: str, out_path: Path, batch_rows: int = 50_000) -> int:
    """Write the client's (product, family) rows to `out_path`; return how many have one.

    A read-only snapshot of its own; the families are read right after the catalogue, and
    a family edited in between is picked up by the next run. A database whose np_product
    has no `family` column has no families: no file is written (and 0 returned).
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with connection(db) as conn, transaction(conn) as cur:
        cur.execute(load_sql("postgres", "extract_snapshot"))
        cur.execute(load_sql("postgres", "families_column"))
        row = cur.fetchone()
        if not row or not row[0]:
            out_path.unlink(missing_ok=True)
            return 0
        batches = copy_out_batches(cur, load_sql("postgres", "extract_families"),
                                   {"client_id": client_id}, FAMILIES,
                                   out_path.with_suffix(".csv"), batch_rows)
        write_batches(batches, tmp, FAMILIES)
    tmp.replace(out_path)
    fam = pq.read_table(out_path, columns=["family"])["family"]
    return len(fam) - fam.null_count


def load_family_stage(cur, client_id: str, predictions: Path, batch_rows: int = 50_000) -> int:
    """Inside a load's transaction: stage the run's family predictions and swap the client's
    rows of npimage_family_prediction for them; return the row count."""
    from npimage.backend.arrowpg import copy_parquet
    from npimage.schemas import FAMILY_PREDICTIONS

    cur.execute(load_sql("postgres", "load_stage_family"))
    n = copy_parquet(cur, predictions, FAMILY_PREDICTIONS,
                     load_sql("postgres", "load_copy_family_prediction"), batch_rows)
    cur.execute(load_sql("postgres", "load_replace_family"), {"client_id": client_id})
    return n
