"""Streams between PostgreSQL and Arrow: query results to Parquet, Parquet to COPY.

Both directions use COPY in CSV and hold about one batch of rows in memory: reads spool
the COPY output to a file and parse it block by block, writes send one COPY per batch.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

_CSV = pacsv.WriteOptions(include_header=False)
_ROW_BYTES = 128  # rough CSV size of a catalogue row, to turn batch_rows into a block size


def copy_out_batches(cur: psycopg2.extensions.cursor, copy_sql: str,
                     params: Mapping[str, Any], schema: pa.Schema, spool: Path,
                     batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Rows of a `COPY (query) TO STDOUT WITH (FORMAT csv)` statement as batches of `schema`.

    COPY is PostgreSQL's bulk path: the rows stream into the file `spool`, which is then
    parsed block by block (about `batch_rows` rows each) and deleted. Parameters are bound
    by psycopg2 as in any query. An unquoted empty field is NULL and a quoted one the empty
    string, as PostgreSQL writes them; timestamp fields arrive as epoch counts of their unit.
    """
    if cur.connection.encoding != "UTF8":
        raise ValueError(f"client_encoding must be UTF8, not {cur.connection.encoding}")
    try:
        with spool.open("wb") as fh:
            cur.copy_expert(cur.mogrify(copy_sql, params).decode(), fh)
        if spool.stat().st_size == 0:  # no row; pyarrow refuses an empty CSV
            return
        reader = pacsv.open_csv(
            spool,
            read_options=pacsv.ReadOptions(column_names=schema.names,
                                           block_size=max(1 << 16, batch_rows * _ROW_BYTES)),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={f.name: _csv_type(f.type) for f in schema}, null_values=[""],
                strings_can_be_null=True, quoted_strings_can_be_null=False),
        )
        for batch in reader:
            yield batch.cast(schema)
    finally:
        spool.unlink(missing_ok=True)


def _csv_type(arrow_type: pa.DataType) -> pa.DataType:
    """Type to parse a CSV column as: timestamps come as integer epoch counts."""
    return pa.int64() if pa.types.is_timestamp(arrow_type) else arrow_type


def write_batches(batches: Iterator[pa.RecordBatch], path: Path, schema: pa.Schema) -> int:
    """Write batches (cast to `schema`) into one Parquet file; return the row count.

    The file is always written, with no row group when there is no batch, so that an empty
    result still reads back with its schema.
    """
    n = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_batch(batch.cast(schema))
            n += batch.num_rows
    return n


def copy_parquet(cur: psycopg2.extensions.cursor, path: Path, schema: pa.Schema, copy_sql: str,
                 batch_rows: int, check: Callable[[pa.Table], None] | None = None) -> int:
    """COPY the rows of a Parquet file (columns of `schema`, in its order) with `copy_sql`.

    `copy_sql` is a `COPY ... FROM STDIN WITH (FORMAT csv)` statement. Strings are always
    quoted and NULLs left empty, so PostgreSQL tells NULL from '' and stores ids holding
    quotes, commas, newlines or backslashes exactly. `check` may reject a batch by raising
    before it is sent. Returns the row count.
    """
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=schema.names):
        table = pa.Table.from_batches([batch]).cast(schema)
        if check is not None:
            check(table)
        buf = io.BytesIO()
        pacsv.write_csv(table, buf, _CSV)
        buf.seek(0)
        cur.copy_expert(copy_sql, buf)
        n += table.num_rows
    return n
