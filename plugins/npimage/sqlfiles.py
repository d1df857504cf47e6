"""SQL kept in `npimage/sql/<dialect>/<name>.sql` (package data), loaded by name.

The folder ships inside the package, so an installed wheel finds it; NPIMAGE_SQL_DIR
overrides it for deployments that lay files out differently.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

_DEFAULT_DIR = Path(__file__).resolve().parent / "sql"


def sql_dir() -> Path:
    """Folder holding the dialect sub-folders (duckdb/, postgres/)."""
    return Path(os.environ.get("NPIMAGE_SQL_DIR", _DEFAULT_DIR))


@cache
def load_sql(dialect: str, name: str) -> str:
    """Text of sql/<dialect>/<name>.sql; a clear error names the file when it is missing."""
    path = sql_dir() / dialect / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"SQL file not found: {path}")
    return path.read_text(encoding="utf-8")


_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def split_statements(script: str) -> list[str]:
    """Statements of a script: split at semicolons that end a line, comments dropped."""
    lines = [ln for ln in script.splitlines() if not ln.lstrip().startswith("--")]
    parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [p.strip() for p in parts if p.strip()]


def run_script(con: duckdb.DuckDBPyConnection, script: str, params: dict[str, Any]
               ) -> duckdb.DuckDBPyRelation | None:
    """Execute each statement of a script with the named parameters it uses.

    DuckDB binds parameters one statement at a time and refuses unused ones, so each
    statement receives exactly the `$names` it mentions. Returns the relation of the last
    statement (for a query), so callers can take it as Arrow.
    """
    result = None
    for statement in split_statements(script):
        used = {name: params[name] for name in _PARAM.findall(statement)}
        result = con.sql(statement, params=used or None)
    return result


_MIGRATION = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")


def migrations(dialect: str) -> list[tuple[int, str]]:
    """(version, name) of the schema migrations sql/<dialect>/migrations/NNNN_name.sql, in order.

    Version 1 is the baseline (duckdb/tables.sql, postgres/schema.sql as of the release
    of commit 3b8234e); migration files start at 0002. `load_sql(dialect, name)` reads one.
    """
    folder = sql_dir() / dialect / "migrations"
    found = sorted((int(m.group(1)), f"migrations/{p.stem}") for p in folder.glob("*.sql")
                   if (m := _MIGRATION.match(p.name)))
    versions = [v for v, _ in found]
    if len(set(versions)) != len(versions) or any(v < 2 for v in versions):
        raise ValueError(f"{folder}: migration numbers must be unique and start at 0002")
    return found


def schema_version(dialect: str) -> int:
    """The schema version this npimage writes: the last migration's number (1 without)."""
    return max([1, *(v for v, _ in migrations(dialect))])


def query_script(con: duckdb.DuckDBPyConnection, script: str, params: dict[str, Any]
                 ) -> pa.Table:
    """The Arrow result of a script whose last statement is a query (see run_script)."""
    result = run_script(con, script, params)
    if result is None:
        raise ValueError("the SQL script ends without a query")
    table: pa.Table = result.to_arrow_table()
    return table
