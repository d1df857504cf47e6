"""Parquet reads and atomic writes shared by every stage."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def write_table(table: pa.Table, path: Path, schema: pa.Schema | None = None) -> Path:
    """Write `table` to `path` via a temporary name and a rename.

    A task killed half-way leaves at most a stray temporary file, never a truncated
    Parquet under the final name; a retry rewrites the same final name.
    """
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_table(path: Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read a Parquet file; an absent file reads as an empty table of `schema`."""
    if not path.exists():
        if schema is None:
            raise FileNotFoundError(path)
        return schema.empty_table()
    table = pq.read_table(path)
    return conform(table, schema) if schema is not None else table


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with the columns of `schema`, in order and cast; columns a file written by an
    older version lacks (added later, nullable) read as nulls."""
    for name in schema.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(schema.names).cast(schema)


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def read_parts(folder: Path, schema: pa.Schema, pattern: str = "*.parquet",
               columns: list[str] | None = None, ids: list[str] | None = None) -> pa.Table:
    """Read the Parquet parts of a folder (sorted by name) as one table of `schema`.

    `ids` restricts the rows to those image ids (pushed down to the Parquet reader).
    """
    files = sorted(str(p) for p in folder.glob(pattern)) if folder.is_dir() else []
    names = columns or schema.names
    if not files:
        return schema.empty_table().select(names)
    dataset = ds.dataset(files, schema=schema, format="parquet")
    flt = ds.field("image_id").isin(ids) if ids is not None else None
    return dataset.to_table(columns=names, filter=flt)
