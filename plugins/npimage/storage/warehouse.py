"""Publish a finished run into the DuckDB warehouse, and open it for queries.

A publish replaces one client's rows in every table inside a single transaction (readers
see the previous run or the new one) under an exclusive file lock, since DuckDB allows
one writing process at a time: runs of other clients wait their turn instead of failing.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from npimage.sqlfiles import load_sql, run_script

TABLES = ("images", "signatures", "rejects", "image_matches", "product_matches")
#: Pack-reading tables (npimage.reading), replaced by their own script when a run has them.
READING_TABLES = ("image_codes", "image_text", "image_reads")


@contextmanager
def exclusive(lock_path: Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive advisory lock on lock_path, waiting up to `timeout` seconds."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{lock_path} stayed locked for {timeout:g}s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the warehouse tables (if absent) and (re)create its views."""
    con.execute(load_sql("duckdb", "tables"))
    con.execute(load_sql("duckdb", "views"))


def publish(warehouse: Path, files: dict[str, Path], run: dict[str, Any],
            before_commit: Callable[[], None] | None = None) -> None:
    """Replace the client's rows with the run's Parquet files and record the run.

    `files` maps catalog, signatures, rejects, image_matches, product_matches to Parquet
    paths; `run` holds the parameters of sql/duckdb/record_run.sql. `before_commit` (the
    backend load) runs inside the transaction, after the rows are replaced: if it raises,
    the warehouse rolls back too, so a failed publish leaves both stores on the previous
    run. Only a DuckDB commit failing after the backend committed could leave them apart,
    and the retried publish then replaces both again.
    """
    paths = {name: p if isinstance(p, list) else str(p) for name, p in files.items()}
    params = {"client_id": run["client_id"], "run_id": run["run_id"], **paths}
    with exclusive(warehouse.with_suffix(".lock")):
        con = duckdb.connect(str(warehouse))
        try:
            ensure_schema(con)
            con.execute("BEGIN TRANSACTION")
            try:
                run_script(con, load_sql("duckdb", "replace_client"), params)
                if all(name in paths for name in READING_TABLES):  # pack reading
                    run_script(con, load_sql("duckdb", "replace_client_reading"), params)
                run_script(con, load_sql("duckdb", "record_run"), run)
                if before_commit is not None:
                    before_commit()
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()


def connect_readonly(warehouse: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection, for reports and queries while runs publish elsewhere."""
    if not warehouse.exists():
        raise FileNotFoundError(f"no warehouse at {warehouse}: run `npimage run` first")
    return duckdb.connect(str(warehouse), read_only=True)
