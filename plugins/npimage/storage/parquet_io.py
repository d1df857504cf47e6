"""Parquet reads and atomic writes shared by every stage, local or on an object store.

Paths are locations (`npimage.storage.store`): a pathlib.Path or a UPath (s3://...).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from npimage.storage.store import Location, arrow, is_remote, location, mkdirs, scratch_dir

#: Columns of already-compressed or noise-like bytes (the report's JPEG thumbnail, the detail
#: signature's pixels) that zstd shrinks by under 5 %: written uncompressed, which halves
#: the CPU of writing a signature table and of reading it back (2000 grocery photos:
#: 62 MB zstd, 65 MB so).
RAW_COLUMNS = frozenset({"thumb", "detail"})


def compression(table: pa.Table) -> str | dict[str, str]:
    """Parquet compression per column: zstd, except RAW_COLUMNS."""
    if not RAW_COLUMNS.intersection(table.column_names):
        return "zstd"
    return {n: "none" if n in RAW_COLUMNS else "zstd" for n in table.column_names}


#: Columns whose values are all distinct (pictures' bytes, feature vectors): Parquet's
#: dictionary encoding, tried by default on every column, only spends CPU on them before it
#: gives up. Without it a signature table of 2 000 grocery photos with FV (70 MB) is
#: written in 0.06 CPU s instead of 0.10 (docs/BENCHMARKS.md, session 8).
NO_DICTIONARY = frozenset({"thumb", "detail", "fv"})


def _options(table: pa.Table) -> dict[str, object]:
    """pq.write_table's options for `table`: compression and dictionary per column."""
    names = table.column_names
    dictionary: bool | list[str] = True
    if NO_DICTIONARY.intersection(names):
        dictionary = [n for n in names if n not in NO_DICTIONARY]
    return {"compression": compression(table), "use_dictionary": dictionary}


def write_table(table: pa.Table, path: Location, schema: pa.Schema | None = None) -> Location:
    """Write `table` to `path` so that no reader ever sees a part of it.

    Local: a temporary name and a rename; a task killed half-way leaves at most a stray
    temporary file, never a truncated Parquet under the final name. Object store: the file
    is built in memory and sent in one PUT (atomic there). A retry rewrites the same name.
    """
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    path = location(path)
    if is_remote(path):
        buf = io.BytesIO()
        pq.write_table(table, buf, **_options(table))
        path.fs.pipe_file(path.path, buf.getvalue())
        return path
    with _replacing(path) as tmp:
        pq.write_table(table, tmp, **_options(table))
    return path


@contextmanager
def _replacing(path: Location) -> Iterator[Path]:
    """A local temporary file that replaces `path` when the block ends without error
    (renamed locally, uploaded once complete to an object store); removed whatever fails."""
    if is_remote(path):
        tmp = scratch_dir() / f".{path.name}.{uuid.uuid4().hex}.tmp"
    else:
        mkdirs(path.parent)
        tmp = Path(path).with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        if is_remote(path):
            path.fs.put_file(str(tmp), path.path)
        else:
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_tables(tables: Iterable[pa.Table], path: Location, schema: pa.Schema,
                 row_group_size: int) -> Location:
    """Write the tables of an iterator one after the other into one Parquet file at `path`,
    holding one of them at a time, atomically as `write_table` does.

    The file has row groups of at most `row_group_size` rows, so that a reader can take
    one of them without the rest. Object store: the file is built in the local scratch
    folder and uploaded once complete (one PUT, or a multipart upload that S3 shows only
    when it is finished), never in memory whole.
    """
    path = location(path)
    with _replacing(path) as tmp, \
            pq.ParquetWriter(tmp, schema, **_options(schema.empty_table())) as writer:
        for table in tables:
            writer.write_table(table.select(schema.names).cast(schema), row_group_size)
    return path


def read_table(path: Location, schema: pa.Schema | None = None,
               columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file; an absent file reads as an empty table of `schema`."""
    path = location(path)
    fs, name = arrow(path)
    try:  # no existence check first: on an object store that is one request less
        if schema is None:
            return pq.read_table(name, filesystem=fs, columns=columns)
        target = pa.schema([schema.field(n) for n in (columns or schema.names)])
        try:
            table = pq.read_table(name, filesystem=fs, columns=target.names)
        except (pa.ArrowInvalid, KeyError):  # a file from before a column was added
            table = pq.read_table(name, filesystem=fs)
    except FileNotFoundError:
        if schema is None:
            raise
        return schema.empty_table().select(columns or schema.names)
    return conform(table, target)


def read_metadata(path: Location) -> pq.FileMetaData:
    """The Parquet footer of a file (row count, schema) without reading its data."""
    fs, name = arrow(location(path))
    with fs.open_input_file(name) as fh:
        return pq.read_metadata(fh)


def num_rows(path: Location) -> int:
    return int(read_metadata(path).num_rows)


def column_names(path: Location) -> list[str]:
    """Top-level column names of a Parquet file."""
    return list(read_metadata(path).schema.to_arrow_schema().names)


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def list_parts(folder: Location, pattern: str = "*.parquet") -> list[Location]:
    """The files of a folder matching `pattern`, sorted by name (absent folder: none).

    Temporary files of interrupted writes (`.name.<uuid>.tmp`) never match a `*.parquet`.
    """
    folder = location(folder)
    if not folder.exists():
        return []
    return sorted((p for p in folder.glob(pattern) if not p.name.startswith(".")),
                  key=lambda p: p.name)


def read_parts(folder: Location, schema: pa.Schema, pattern: str = "*.parquet",
               columns: list[str] | None = None, ids: list[str] | None = None) -> pa.Table:
    """Read the Parquet parts of a folder (sorted by name) as one table of `schema`.

    `ids` restricts the rows to those image ids (pushed down to the Parquet reader).
    """
    files = list_parts(folder, pattern)
    names = columns or schema.names
    if not files:
        return schema.empty_table().select(names)
    fs, _ = arrow(files[0])
    dataset = ds.dataset([arrow(p)[1] for p in files], schema=schema, format="parquet",
                         filesystem=fs)
    flt = ds.field("image_id").isin(pa.array(ids, pa.string())) if ids is not None else None
    return dataset.to_table(columns=names, filter=flt)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly the columns and types of `schema`.

    A column whose values are all null may have been written as Arrow's `null` type (a
    run without feature vectors, an empty batch): it is cast like any other, so tables
    of runs with and without FV, or empty and full batches, always concatenate. Columns
    a file written by an older version lacks (added later, nullable) read as nulls.
    """
    for name in schema.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(schema.names).cast(schema)


def concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """Concatenate tables of one contract into one table of `schema` (types explicit)."""
    if not tables:
        return schema.empty_table()
    return pa.concat_tables([conform(t, schema) for t in tables])
