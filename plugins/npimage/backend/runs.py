"""The npimage_run table: one row per (client, run) with status, counts and watermark.

A run is 'running' from record_run_start, then 'success' (set by load_matches in the same
transaction as the matches, so the two never disagree) or 'failed'. The watermark of the
last successful run is where the next incremental extract starts.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import partial
from typing import Any

import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from npimage.backend.connection import Db, connection, transaction
from npimage.backend.schema import apply_schema
from npimage.bands import BANDS
from npimage.sqlfiles import load_sql

STATUSES = ("running", "success", "failed")
#: run_info keys stored in their own npimage_run columns; any other key goes to `details`.
RUN_COLUMNS = ("mode", "started_at", "n_images", "n_changed", "n_deleted",
               "n_image_matches", "n_product_matches", "model", "thresholds", "watermark")
#: Keys gathered into `thresholds` (with npimage.bands.BANDS) when run_info has no thresholds.
THRESHOLD_KEYS = ("threshold", "top_k", "weights")
_MAX_ERROR = 4000
_JSON_DUMPS = partial(json.dumps, default=str)  # datetimes and paths as text


def run_params(client_id: str, run_id: str, status: str, run_info: dict[str, Any] | None,
               error: str | None = None) -> dict[str, Any]:
    """Parameters of run_upsert.sql from a free-form run_info dict.

    Datetimes may be datetime objects or ISO strings; thresholds and the extra keys are
    stored as JSON. The pipeline's own names are understood: `fv_model` for model, and
    threshold, top_k, weights (with the score bands) for thresholds.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    info = dict(run_info or {})
    if "model" not in info and "fv_model" in info:
        info["model"] = info.pop("fv_model")
    if "thresholds" not in info and any(key in info for key in THRESHOLD_KEYS):
        info["thresholds"] = {key: info.pop(key) for key in THRESHOLD_KEYS if key in info}
        info["thresholds"]["bands"] = dict(BANDS)
    params: dict[str, Any] = {key: info.pop(key, None) for key in RUN_COLUMNS}
    params["thresholds"] = _json(params["thresholds"])
    params["details"] = _json(info or None)
    params.update(client_id=client_id, run_id=run_id, status=status,
                  error=None if error is None else error[:_MAX_ERROR])
    return params


def _json(value: Any) -> psycopg2.extras.Json | None:
    return None if value is None else psycopg2.extras.Json(value, dumps=_JSON_DUMPS)


def upsert_run(cur: psycopg2.extensions.cursor, params: dict[str, Any]) -> None:
    """Run run_upsert.sql on `cur` (inside the caller's transaction)."""
    cur.execute(load_sql("postgres", "run_upsert"), params)


def record_run_start(db: Db, client_id: str, run_id: str,
                     run_info: dict[str, Any] | None = None) -> None:
    """Mark (client, run) as running; a retried run goes back to running, error cleared.

    Creates the npimage_* tables first when they are missing.
    """
    with connection(db) as conn:
        apply_schema(conn)
        _upsert(conn, run_params(client_id, run_id, "running", run_info))


def abandon_other_runs(db: Db, client_id: str, run_id: str) -> int:
    """Mark the client's other 'running' rows 'failed' (abandoned); how many there were.

    Call it only while holding the client's run lock (npimage.storage.locks): then no
    other run of the client is in flight, and a 'running' row is one that was killed.
    """
    with connection(db) as conn, transaction(conn) as cur:
        cur.execute(load_sql("postgres", "run_abandon"), {"client_id": client_id,
                                                          "run_id": run_id})
        return cur.rowcount


def _upsert(conn: psycopg2.extensions.connection, params: dict[str, Any]) -> None:
    with transaction(conn) as cur:
        upsert_run(cur, params)


def record_run_end(db: Db, client_id: str, run_id: str, status: str,
                   run_info: dict[str, Any] | None = None, error: str | None = None) -> None:
    """Mark (client, run) as finished with `status` ('success' or 'failed').

    load_matches already does this on success and, given a DSN, on failure; call it for a
    run that fails before its load (e.g. from an Airflow on_failure_callback).
    """
    params = run_params(client_id, run_id, status, run_info, error)
    with connection(db) as conn:
        apply_schema(conn)
        _upsert(conn, params)


def _fetch_dict(db: Db, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    with connection(db) as conn, transaction(conn) as cur:
        cur.execute(load_sql("postgres", name), params)
        row = cur.fetchone()
        return None if row is None else dict(zip([d.name for d in cur.description], row,
                                                 strict=True))


def get_run(db: Db, client_id: str, run_id: str) -> dict[str, Any] | None:
    """The npimage_run row of (client, run) as a dict, or None."""
    return _fetch_dict(db, "run_get", {"client_id": client_id, "run_id": run_id})


def last_successful_run(db: Db, client_id: str) -> dict[str, Any] | None:
    """run_id, mode, started_at, finished_at, watermark, n_images of the client's last
    successful run, or None when it has none (or the backend has no npimage_run yet)."""
    try:
        return _fetch_dict(db, "run_last_success", {"client_id": client_id})
    except psycopg2.errors.UndefinedTable:
        return None


def last_watermark(db: Db, client_id: str) -> datetime | None:
    """Max np_image.updated_at seen by the client's last successful run (None: no such run)."""
    run = last_successful_run(db, client_id)
    return None if run is None else run["watermark"]
