"""The warehouse: each client's published run as Parquet files, and DuckDB views over them.

Shared by readers and parallel publishers, on one host or many, local or on S3:

- A publish never rewrites data. The run's own Parquet files (written under its run
  folder before the publish) become the client's tables; the publish writes one small
  history file for the `runs` table, then replaces the client's pointer
  `clients/<client>/current.json` in one atomic write (a rename locally, one PUT on an
  object store). That write is the commit: before it every reader sees the previous run,
  after it the new one, and never a mix, since a pointer names complete, immutable files.
- Clients never share a pointer, so publishes of different clients never wait for each
  other and never conflict, whatever host they run on.
- `connect(data_dir)` gives a DuckDB connection whose tables (`images`, `signatures`,
  `rejects`, `image_matches`, `product_matches`, `runs`) are views over the files the
  pointers name at connect time, plus the analysts' views of views.sql. A connection
  keeps its snapshot until it is closed; nothing it does can make a publish fail.
- For a local data dir, `warehouse.duckdb` holds the same views for SQL tools
  (`duckdb data/warehouse.duckdb`). It is rebuilt after each publish into a temporary
  file renamed over the old one: a reader with the old file open keeps its snapshot.
  It is a convenience, never the commit: failing to rebuild it only logs a warning.
- Schema versions: the tables are defined by sql/duckdb/tables.sql (version 1, the
  release of commit 3b8234e) plus the ordered files sql/duckdb/migrations/NNNN_*.sql.
  Views select the defined columns from each file and fill the ones an older file lacks
  with NULL, so files published by an older npimage read as the current schema without
  being rewritten. A warehouse.duckdb of version 1 (real tables) is converted in place
  by `migrate()` without losing rows.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import duckdb

from npimage import sqlfiles
from npimage.sqlfiles import load_sql, run_script
from npimage.storage.layout import POINTER, WAREHOUSE_FILE, Layout, read_json, safe_name
from npimage.storage.parquet_io import column_names, write_table
from npimage.storage.store import Location, is_remote, location, write_text_atomic

log = logging.getLogger("npimage")

#: Tables a run publishes (one entry each in a pointer); `runs` is the history.
TABLES = ("images", "signatures", "rejects", "image_matches", "product_matches")
HISTORY = "runs"


# -- schema ------------------------------------------------------------------------------

def schema_version() -> int:
    """The warehouse schema version this npimage writes."""
    return sqlfiles.schema_version("duckdb")


def apply_migrations(con: duckdb.DuckDBPyConnection, dialect: str = "duckdb",
                     since: int = 1) -> None:
    """Run the migrations after version `since` on a DuckDB connection, in order."""
    for version, name in sqlfiles.migrations(dialect):
        if version > since:
            con.execute(load_sql(dialect, name))


@cache
def table_columns() -> dict[str, list[tuple[str, str]]]:
    """(column, DuckDB type) of every warehouse table at the current schema version."""
    con = duckdb.connect()
    try:
        con.execute(load_sql("duckdb", "tables"))
        apply_migrations(con)
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall()
    finally:
        con.close()
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in rows:
        out.setdefault(table, []).append((column, dtype))
    return out


# -- views -------------------------------------------------------------------------------

def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _select(table: str, entry: dict[str, Any], layout: Layout, run_id: str) -> str:
    """SELECT of one client's files of `table`, with the current schema's columns."""
    files = ", ".join(_lit(str(layout.resolve(f))) for f in entry["files"])
    present = set(entry["columns"])
    cols = []
    for name, dtype in table_columns()[table]:
        if name in present:
            cols.append(f'CAST("{name}" AS {dtype}) AS "{name}"')
        elif name == "run_id":  # the catalogue file of a run has no run_id column
            cols.append(f'CAST({_lit(run_id)} AS {dtype}) AS "{name}"')
        else:  # a column added after this file was written
            cols.append(f'CAST(NULL AS {dtype}) AS "{name}"')
    return f"SELECT {', '.join(cols)} FROM read_parquet([{files}], union_by_name = true)"


def _empty(table: str) -> str:
    cols = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in table_columns()[table])
    return f"SELECT {cols} WHERE false"


def snapshot(layout: Layout) -> list[dict[str, Any]]:
    """The pointers of every published client (complete ones only), sorted by folder."""
    out = []
    for path in layout.pointers():
        ref = read_json(path)
        if ref and "tables" in ref:
            out.append(ref)
    return out


def view_statements(layout: Layout, pointers: list[dict[str, Any]]) -> list[str]:
    """CREATE VIEW statements of every table over the files the pointers name."""
    stmts = []
    for table in table_columns():
        parts = [_select(table, ref["tables"][table], layout, ref["run_id"])
                 for ref in pointers if table in ref.get("tables", {})]
        body = "\nUNION ALL\n".join(parts) if parts else _empty(table)
        stmts.append(f'CREATE OR REPLACE VIEW "{table}" AS\n{body}')
    return stmts


def _create_views(con: duckdb.DuckDBPyConnection, layout: Layout,
                  pointers: list[dict[str, Any]]) -> None:
    for stmt in view_statements(layout, pointers):
        con.execute(stmt)
    con.execute(load_sql("duckdb", "views"))
    _decisions_view(con, layout)
    con.execute("CREATE OR REPLACE VIEW npimage_schema AS SELECT "
                f"{schema_version()} AS version")


def _decisions_view(con: duckdb.DuckDBPyConnection, layout: Layout) -> None:
    """The view `decisions` over the reviewers' log in the data dir (npimage.review.store).

    Decisions live beside the published runs, never in them: people make them at any
    time, and no publish replaces them. A remote data dir gets an empty view (the log is
    kept on local disks only).
    """
    from npimage.review.store import attach_view, empty_view

    if is_remote(layout.root):
        empty_view(con)
    else:
        attach_view(con, Path(str(layout.root)))


def register_store(con: duckdb.DuckDBPyConnection, root: Location) -> None:
    """Let DuckDB read `root`'s object store through fsspec (works offline, no httpfs)."""
    if is_remote(root):
        con.register_filesystem(root.fs)


def connect(target: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection on the warehouse: its tables and views, read-only in effect.

    `target` is a data dir (local or URL), or a `.duckdb` file (opened read-only as is).
    For a data dir the views are built in memory from the pointers as they are now: the
    connection keeps that snapshot, and never locks anything a publish needs.
    """
    where = location(target)
    if str(where).endswith(".duckdb"):
        standalone = not is_remote(where) and not (Path(where).parent / "clients").is_dir()
        if standalone and _is_legacy(Path(where)):  # a DuckDB file of tables, no data dir
            return duckdb.connect(str(where), read_only=True)
        where = where.parent
    layout = Layout.of(str(where))
    if not is_remote(layout.root):
        migrate(layout.root)
    pointers = snapshot(layout)
    if not pointers and not layout.root.exists():
        raise FileNotFoundError(f"no warehouse at {where}: run `npimage run` first")
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    register_store(con, layout.root)
    _create_views(con, layout, pointers)
    return con


def connect_readonly(target: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """Same as `connect` (kept for callers of the older API)."""
    return connect(target)


def display(data_dir: str | os.PathLike[str]) -> str:
    """How to name the warehouse to a user: the DuckDB file, or the data dir's URL."""
    root = location(data_dir)
    if is_remote(root):
        return f"{root} (npimage.storage.warehouse.connect)"
    return str(Path(root, WAREHOUSE_FILE).resolve())


def refresh_file(layout: Layout, attempts: int = 5) -> bool:
    """Rebuild `warehouse.duckdb` (local data dir) so its views match the pointers.

    Built in a temporary file and renamed over the old one: an open reader keeps the old
    file (its snapshot). Publishers of other clients may rebuild at the same time; each
    checks after its rename that the pointers did not move meanwhile and rebuilds if they
    did, so the last rename always reflects the latest pointers. True when consistent.
    """
    if is_remote(layout.root):
        return True
    for _ in range(attempts):
        pointers = snapshot(layout)
        target = Path(layout.warehouse_file)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            con = duckdb.connect(str(tmp))
            try:
                _create_views(con, layout, pointers)
            finally:
                con.close()
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
            Path(f"{tmp}.wal").unlink(missing_ok=True)
        if snapshot(layout) == pointers:
            return True
    return False


# -- publish -----------------------------------------------------------------------------

def _history_row(run: dict[str, Any], published_at: datetime) -> Any:
    """The run's row of the `runs` table, as Arrow (typed by tables.sql + migrations)."""
    con = duckdb.connect()
    try:
        con.execute(load_sql("duckdb", "tables"))
        apply_migrations(con)
        run_script(con, load_sql("duckdb", "record_run"), run)
        con.execute("UPDATE runs SET published_at = $t", {"t": published_at})
        return con.sql("SELECT * FROM runs").to_arrow_table()
    finally:
        con.close()


def _entry(layout: Layout, files: list[Location]) -> dict[str, Any]:
    files = [location(f) for f in files]
    if not files:
        raise ValueError("a published table needs at least one file (an empty one will do)")
    return {"files": [layout.relative(f) for f in files], "columns": column_names(files[0])}


def check_files(data_dir: str | os.PathLike[str], client_id: str,
                tables: dict[str, list[Location]]) -> None:
    """Refuse files a reader could not use as the table (ValueError naming the fault).

    A publish only names files, so it checks what loading them used to check: every
    column the table defines has the table's type (read from the Parquet footers), and
    every row belongs to `client_id` (one column read).
    """
    con = duckdb.connect()
    try:
        register_store(con, location(data_dir))
        for table, files in tables.items():
            want = dict(table_columns()[table])
            names = [str(location(f)) for f in files]
            for name in names:
                got = con.execute("DESCRIBE SELECT * FROM read_parquet($f)", {"f": name}).fetchall()
                wrong = [f"{c} is {t}, the table wants {want[c]}" for c, t, *_ in got
                         if c in want and t != want[c]]
                if wrong:
                    raise ValueError(f"{table}: {name}: {'; '.join(wrong)}")
            other = con.execute("SELECT count(*) FROM read_parquet($f) WHERE client_id IS "
                                "DISTINCT FROM $c", {"f": names, "c": client_id}).fetchall()
            if other[0][0]:
                raise ValueError(f"{table}: {other[0][0]} row(s) whose client_id is not "
                                 f"{client_id!r} in {names[:3]}")
    finally:
        con.close()


def publish(data_dir: str | os.PathLike[str], client_id: str, run_id: str,
            tables: dict[str, list[Location]], run: dict[str, Any],
            around_commit: Callable[[Callable[[], None]], None] | None = None,
            ) -> dict[str, Any]:
    """Make a finished run the client's published run; return the new pointer.

    `tables` maps each warehouse table (TABLES, or one a migration added) to the run's
    Parquet files holding its rows (only `client_id`'s); `run` holds the parameters of
    sql/duckdb/record_run.sql. The commit is one atomic write of the client's pointer.

    `around_commit(commit)` (the backend load) must call `commit()` inside its own
    transaction, just before committing it: if the pointer write fails, the backend rolls
    back; if the backend fails after the pointer was written, the previous pointer is put
    back. Either both stores take the new run or neither (only a crash between the two
    commits leaves them apart, and the retried publish replaces both again).

    After the commit nothing can make the publish fail: rebuilding warehouse.duckdb is
    best effort (a warning), and the next publish or `connect` catches up.
    """
    layout = Layout.of(str(data_dir))
    unknown = set(tables) - set(table_columns())
    if unknown:
        raise ValueError(f"not warehouse tables: {sorted(unknown)} (add a migration first)")
    if not is_remote(layout.root):
        migrate(layout.root)
    check_files(data_dir, client_id, tables)
    pointer_path = layout.pointer(client_id)
    previous = read_json(pointer_path)
    published_at = datetime.now(UTC)
    history = layout.client_dir(client_id) / "history" / f"{safe_name(run_id)}.parquet"
    write_table(_history_row(run, published_at), history)
    old_history = [h for h in (previous or {}).get("history", [])
                   if h != layout.relative(history)]
    pointer: dict[str, Any] = {
        "run_id": run_id,
        "schema_version": schema_version(),
        "published_at": published_at.isoformat(),
        "tables": {name: _entry(layout, files) for name, files in tables.items()},
        "history": [*old_history, layout.relative(history)],
    }
    old_columns = (previous or {}).get("tables", {}).get(HISTORY, {}).get("columns", [])
    pointer["tables"][HISTORY] = {  # files of older versions may lack newer columns
        "files": pointer["history"],
        "columns": sorted(set(old_columns) | set(column_names(history))),
    }
    committed = []

    def commit() -> None:
        write_text_atomic(pointer_path, json.dumps(pointer, indent=1))
        committed.append(True)

    try:
        if around_commit is None:
            commit()
        else:
            around_commit(commit)
            if not committed:
                raise RuntimeError("around_commit returned without calling commit()")
    except BaseException:
        if committed:  # the backend failed after the pointer moved: put the old one back
            _restore(pointer_path, previous)
        raise
    try:
        refresh_file(layout)
    except Exception as exc:  # the run is published; the file catches up
        log.warning("run %s of %s is published, but %s was not rebuilt: %s", run_id,
                    client_id, layout.warehouse_file, exc)
    return pointer


def _restore(pointer_path: Location, previous: dict[str, Any] | None) -> None:
    try:
        if previous is None:
            pointer_path.unlink(missing_ok=True)
        else:
            write_text_atomic(pointer_path, json.dumps(previous, indent=1))
    except Exception as exc:  # the original error matters more
        log.error("could not restore %s after a failed publish: %s", pointer_path, exc)


# -- migration of a version-1 warehouse (tables inside warehouse.duckdb) -----------------

def _is_legacy(path: Path) -> bool:
    """Whether a warehouse.duckdb holds real tables (version 1) rather than views."""
    if not path.is_file():
        return False
    con = duckdb.connect(str(path), read_only=True)
    try:
        return bool(con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'images' "
            "AND table_type = 'BASE TABLE'").fetchall()[0][0])
    finally:
        con.close()


@contextmanager
def _migration_lock(root: Path) -> Iterator[None]:
    """One migrating process per local data dir (version 1 existed only on local disks)."""
    with (root / ".migrate.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def migrate(data_dir: str | os.PathLike[str]) -> bool:
    """Convert a version-1 warehouse.duckdb in place; True when there was one to convert.

    Every client's rows of every table are exported to Parquet under the client's folder
    (`clients/<client>/warehouse-v1/`), its runs history too, and the client's pointer is
    written naming them (the run id of the old `current.json`, else its latest run). The
    old file is kept as `warehouse.v1.duckdb` and warehouse.duckdb is rebuilt as views:
    the same rows under the same table names. Safe to run twice, and by racing processes.
    """
    root = Path(str(data_dir))
    if not _is_legacy(root / WAREHOUSE_FILE):
        return False
    with _migration_lock(root):
        if not _is_legacy(root / WAREHOUSE_FILE):
            return False
        layout = Layout.of(str(root))
        legacy = root / "warehouse.v1.duckdb"
        os.replace(root / WAREHOUSE_FILE, legacy)
        con = duckdb.connect(str(legacy), read_only=True)
        try:
            clients = [r[0] for r in con.execute(
                "SELECT client_id FROM images UNION SELECT client_id FROM runs "
                "ORDER BY 1").fetchall()]
            for client_id in clients:
                _export_client(con, layout, client_id)
        finally:
            con.close()
        refresh_file(layout)
        log.warning("warehouse of %s migrated from version 1 to %d (old file kept as %s)",
                    root, schema_version(), legacy)
        return True


def _export_client(con: duckdb.DuckDBPyConnection, layout: Layout, client_id: str) -> None:
    """Write one client's version-1 rows as Parquet and point the client at them."""
    folder = layout.client_dir(client_id) / "warehouse-v1"
    old = read_json(layout.pointer(client_id)) or {}
    latest = con.execute("SELECT run_id FROM runs WHERE client_id = $c "
                         "ORDER BY published_at DESC LIMIT 1", {"c": client_id}).fetchall()
    run_id = old.get("run_id") or (latest[0][0] if latest else "migrated")
    entries = {}
    for table in (*TABLES, HISTORY):
        arrow = con.sql(f'SELECT * FROM "{table}" WHERE client_id = $c',
                        params={"c": client_id}).to_arrow_table()
        path = write_table(arrow, folder / f"{table}.parquet")
        entries[table] = {"files": [layout.relative(path)], "columns": arrow.column_names}
    pointer = {"run_id": run_id, "schema_version": schema_version(),
               "published_at": datetime.now(UTC).isoformat(), "migrated_from": 1,
               "tables": entries, "history": entries[HISTORY]["files"]}
    write_text_atomic(layout.pointer(client_id), json.dumps(pointer, indent=1))


__all__ = ["POINTER", "TABLES", "connect", "connect_readonly", "migrate", "publish",
           "refresh_file", "schema_version", "table_columns"]
