"""Load a run's matches into the backend, replacing one client's rows atomically.

One transaction per load: COPY both Parquet files into session-private staging tables,
take the client's advisory lock, delete the client's rows and insert the staged ones, and
mark the npimage_run row 'success' with its counts. Readers see the old matches until the
commit, then the new ones, never a mix. Any failure (a killed connection included) rolls
everything back, so the old matches stay, and the run is marked 'failed'; a retry replaces
again, so nothing is lost or duplicated. Other clients' rows are never touched, and their
loads run in parallel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pyarrow as pa
import pyarrow.compute as pc

from npimage.backend.arrowpg import copy_parquet
from npimage.backend.connection import Db, connection, transaction
from npimage.backend.runs import record_run_end, run_params, upsert_run
from npimage.backend.schema import apply_schema
from npimage.schemas import IMAGE_MATCHES, PRODUCT_MATCHES
from npimage.sqlfiles import load_sql

log = logging.getLogger(__name__)

#: First key of the advisory locks taken by loads (second key: hashtext(client_id)).
LOCK_CLASS = 0x6E70


def load_matches(db: Db, client_id: str, run_id: str, image_matches: Path,
                 product_matches: Path, run_info: dict[str, Any] | None = None,
                 batch_rows: int = 50_000,
                 before_commit: Callable[[], None] | None = None,
                 family_predictions: Path | None = None) -> dict[str, Any]:
    """Replace the client's rows of npimage_image_match and npimage_product_match.

    The Parquet files follow npimage.schemas.IMAGE_MATCHES and PRODUCT_MATCHES and may
    hold only `client_id`'s rows. `run_info` fills the npimage_run row (mode, started_at,
    n_images, n_changed, n_deleted, model, thresholds, watermark; other keys go to its
    details). `family_predictions` (schemas.FAMILY_PREDICTIONS), when given, replaces the
    client's npimage_family_prediction rows in the same transaction. The npimage_* tables
    are created first when missing. Returns the client,
    run, status and loaded row counts. On failure the
    previous matches stay and the error is raised after marking the run 'failed' (when
    `db` is a DSN, or a connection still alive). `before_commit` runs inside the load's
    transaction just before its COMMIT (the warehouse publish): if it raises, the load
    rolls back.
    """
    for path in (image_matches, product_matches):
        if not path.is_file():
            raise FileNotFoundError(f"matches file not found: {path}")
    try:
        with connection(db) as conn:
            apply_schema(conn)
            counts = _load(conn, client_id, run_id, image_matches, product_matches, run_info,
                           batch_rows, before_commit, family_predictions)
    except Exception as exc:
        _record_failure(db, client_id, run_id, exc)
        raise
    return {"client_id": client_id, "run_id": run_id, "status": "success", **counts}


def _load(conn: psycopg2.extensions.connection, client_id: str, run_id: str,
          image_matches: Path, product_matches: Path, run_info: dict[str, Any] | None,
          batch_rows: int, before_commit: Callable[[], None] | None = None,
          family_predictions: Path | None = None) -> dict[str, int]:
    """The load's one transaction: stage, lock, swap, mark the run; the loaded counts."""
    with transaction(conn) as cur:
        cur.execute(load_sql("postgres", "load_stage"))
        n_image = copy_parquet(cur, image_matches, IMAGE_MATCHES,
                               load_sql("postgres", "load_copy_image_match"), batch_rows,
                               _only_client(client_id, image_matches))
        n_product = copy_parquet(cur, product_matches, PRODUCT_MATCHES,
                                 load_sql("postgres", "load_copy_product_match"),
                                 batch_rows, _only_client(client_id, product_matches))
        cur.execute(load_sql("postgres", "load_lock"),
                    {"lock_class": LOCK_CLASS, "client_id": client_id})
        cur.execute(load_sql("postgres", "load_replace"), {"client_id": client_id})
        counts = {"n_image_matches": n_image, "n_product_matches": n_product}
        if family_predictions is not None:
            from npimage.backend.families import load_family_stage

            counts["n_family_predictions"] = load_family_stage(cur, client_id,
                                                               family_predictions, batch_rows)
        upsert_run(cur, run_params(client_id, run_id, "success", {**(run_info or {}),
                                                                    **counts}))
        if before_commit is not None:
            before_commit()
    return counts


def _only_client(client_id: str, path: Path) -> Callable[[pa.Table], None]:
    """A batch check that refuses rows of any other client (or without one)."""

    def check(table: pa.Table) -> None:
        ours = pc.fill_null(pc.equal(table["client_id"], client_id), False)
        if not pc.all(ours).as_py():
            raise ValueError(f"{path} holds rows whose client_id is not {client_id!r}")

    return check


def _record_failure(db: Db, client_id: str, run_id: str, exc: Exception) -> None:
    """Mark the run 'failed' with the error; never raises (the load's error matters more).

    A DSN gets a new connection, so this works even when the server killed the load's one.
    """
    if not isinstance(db, str) and db.closed:
        log.warning("run %s of %s not marked failed: its connection is closed", run_id,
                    client_id)
        return
    try:
        record_run_end(db, client_id, run_id, "failed", error=f"{type(exc).__name__}: {exc}")
    except (psycopg2.Error, RuntimeError) as err:
        log.warning("run %s of %s not marked failed: %s", run_id, client_id, err)
