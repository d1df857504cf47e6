"""Streams between PostgreSQL and Arrow: query results to Parquet, Parquet to COPY.

Neither direction holds more than one batch of rows in memory: reads go through a
server-side cursor fetched `batch_rows` at a time, writes send one COPY per batch.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

_CSV = pacsv.WriteOptions(include_header=False)


def query_batches(conn: psycopg2.extensions.connection, sql: str, params: Mapping[str, Any],
                  schema: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Rows of `sql` as record batches of `schema` (columns by position), streamed.

    Uses a server-side (named) cursor, so it must run inside a transaction (it does on a
    connection that is not in autocommit mode). Integer columns read into timestamp fields
    are taken as counts of the field's unit since the epoch.
    """
    with conn.cursor(name=f"npimage_{uuid.uuid4().hex}") as cur:
        cur.itersize = batch_rows
        cur.execute(sql, params)
        while rows := cur.fetchmany(batch_rows):
            columns = zip(*rows, strict=True)
            arrays = [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def write_batches(batches: Iterator[pa.RecordBatch], path: Path, schema: pa.Schema) -> int:
    """Write batches (cast to `schema`) into one Parquet file; return the row count.

    The file is always written, with no row group when there is no batch, so that an empty
    result still reads back with its schema.
    """
    n = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_table(pa.Table.from_batches([batch]).cast(schema))
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
