"""Consolidate: the run's full signature set, cut into shards for compare, and its rejects.

The signature batches of this run plus, in an incremental run, the baseline's signatures
of the unchanged images still in the catalogue. Sorted by image_id, so a row number names
the same image in every shard and in the query table.

Memory stays bounded whatever the client's size. Only the light columns (ids, hashes,
sizes: ~0.2 KB an image) of the whole set are held and sorted; the heavy ones, the FV,
the detail signature and the report's thumbnail (~34 KB an image with FV), go from the
row group they were read from to the shard they are written into, CHUNK_ROWS rows at a
time, a source row group held from the first of its rows a chunk needs to the last.
Sources come in image_id order (a full run's batches follow the catalogue, a baseline's
shards are sorted), so about one row group of each source is held at a time. The query
table gets its FV the same way (docs/SCALE.md, bench/consolidate.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from npimage.schemas import CATALOG, SIGNATURES
from npimage.storage.parquet_io import (
    concat,
    conform,
    list_parts,
    read_parts,
    read_table,
    write_tables,
)
from npimage.storage.store import Location, arrow

#: Columns copied from source to shard a chunk at a time, never held for the whole set.
HEAVY = ("fv", "detail", "thumb")
LIGHT_SCHEMA = pa.schema([f for f in SIGNATURES if f.name not in HEAVY])
HEAVY_SCHEMA = pa.schema([SIGNATURES.field(n) for n in HEAVY])
#: Rows per chunk written, and per row group of a shard (~35 MB of heavy columns): what a
#: later consolidate, `stored_by_id` or the report reads at least from a shard.
CHUNK_ROWS = 1024
#: Columns the light table carries to find a row's heavy columns: its source row group
#: (an index into `Signatures.sources`) and its row there.
SOURCE = ("_source", "_row")


@dataclass(frozen=True)
class RowGroup:
    """One row group of one Parquet file of signatures."""

    path: Location
    index: int


@dataclass
class Signatures:
    """The run's signature set: its light columns in image_id order, each row with the
    source row group and row where its heavy columns are read from."""

    light: pa.Table
    sources: list[RowGroup]
    #: sources[:fresh_sources] are this run's batches, the rest the baseline's shards
    fresh_sources: int

    @property
    def num_rows(self) -> int:
        return int(self.light.num_rows)

    def without_source(self) -> pa.Table:
        """The light columns alone (LIGHT_SCHEMA)."""
        return self.light.drop_columns(list(SOURCE))

    def fresh(self) -> pa.Table:
        """The light rows this run computed (from its batches, not from the baseline)."""
        return self.without_source().filter(
            pc.less(self.light[SOURCE[0]], self.fresh_sources))


def batch_files(run_dir: Location, folder: str) -> list[Location]:
    """This run's output files of the planned batches only (stale files of older plans
    ignored). A planned batch without its output raises: it is never silently skipped."""
    names = [p.name for p in list_parts(run_dir / "plan", "batch-*.parquet")]
    missing = [n for n in names if not (run_dir / folder / n).exists()]
    if missing:
        raise RuntimeError(f"signature batches not computed: {missing[:5]}")
    return [run_dir / folder / n for n in names]


def batch_outputs(run_dir: Location, folder: str, schema: pa.Schema) -> pa.Table:
    """This run's outputs of the planned batches as one table (see `batch_files`)."""
    return concat([read_table(p, schema) for p in batch_files(run_dir, folder)], schema)


def _light(path: Location, sources: list[RowGroup]) -> pa.Table:
    """The light columns of a signature file, each row with its row group (appended to
    `sources`) and its row in it; the file is opened once for both."""
    fs, name = arrow(path)
    with fs.open_input_file(name) as fh:
        parquet = pq.ParquetFile(fh, pre_buffer=False)
        meta = parquet.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        present = [n for n in LIGHT_SCHEMA.names if n in parquet.schema_arrow.names]
        table = conform(parquet.read(columns=present), LIGHT_SCHEMA)
    first = len(sources)
    sources.extend(RowGroup(path, i) for i in range(len(sizes)))
    source = np.repeat(np.arange(first, first + len(sizes), dtype=np.int32), sizes)
    row = np.concatenate([np.arange(n, dtype=np.int32) for n in [0, *sizes]])
    return table.append_column(SOURCE[0], pa.array(source, pa.int32())) \
        .append_column(SOURCE[1], pa.array(row, pa.int32()))


def all_signatures(run_dir: Location, catalog: pa.Table, baseline: Location | None) -> Signatures:
    """This run's fresh signatures + the baseline's rows of unplanned catalogue images."""
    sources: list[RowGroup] = []
    parts = [_light(p, sources) for p in batch_files(run_dir, "sig_batches")]
    fresh = len(sources)
    if baseline is not None:
        planned = read_parts(run_dir / "plan", CATALOG, "batch-*.parquet", columns=["image_id"])
        kept = catalog.filter(pc.invert(pc.is_in(catalog["image_id"], planned["image_id"])))
        parts += [_kept(path, sources, kept["image_id"])
                  for path in list_parts(baseline / "signatures", "shard-*.parquet")]
    schema = LIGHT_SCHEMA.append(pa.field(SOURCE[0], pa.int32())) \
        .append(pa.field(SOURCE[1], pa.int32()))
    return Signatures(sorted_by_id(concat(parts, schema)), sources, fresh)


def _kept(path: Location, sources: list[RowGroup], kept: pa.ChunkedArray) -> pa.Table:
    """`_light` of a baseline shard, only its rows of `kept` images (the table itself, not
    a copy, when it keeps them all)."""
    rows = _light(path, sources)
    mask = pc.is_in(rows["image_id"], kept)
    return rows if pc.all(mask).as_py() else rows.filter(mask)


def sorted_by_id(sigs: pa.Table) -> pa.Table:
    """`sigs` sorted by image_id; as it is when it is so already (a full run's batches come
    in catalogue order)."""
    ids = sigs["image_id"]
    if len(ids) < 2 or pc.all(pc.less_equal(ids[:-1], ids[1:])).as_py():
        return sigs
    return sigs.sort_by("image_id")


def shard_rows(n_signatures: int, shard_size: int, max_shards: int) -> int:
    """Rows per compare shard: shard_size, grown so there are at most max_shards shards."""
    return max(shard_size, math.ceil(n_signatures / max_shards))


def write_shards(sigs: Signatures, folder: Location, rows: int,
                 chunk_rows: int = CHUNK_ROWS) -> list[dict[str, int]]:
    """Replace the shards in `folder` by `sigs` cut every `rows` rows (one shard at least),
    written `chunk_rows` rows at a time (see the module docstring).

    Returns one {"shard", "first_row"} per shard: the items compare is mapped over.
    """
    for stale in list_parts(folder, "shard-*.parquet"):
        stale.unlink()
    light = sigs.without_source()
    heavy = _Streamed(sigs, np.arange(sigs.num_rows), HEAVY_SCHEMA)
    shards = []
    for i, start in enumerate(range(0, max(sigs.num_rows, 1), rows)):
        stop = min(start + rows, sigs.num_rows)
        chunks = (_joined(light.slice(lo, min(chunk_rows, stop - lo)),
                          heavy.rows(lo, min(lo + chunk_rows, stop)), SIGNATURES)
                  for lo in range(start, stop, chunk_rows))
        write_tables(chunks, folder / f"shard-{i:05d}.parquet", SIGNATURES, chunk_rows)
        shards.append({"shard": i, "first_row": start})
    return shards


#: queries.parquet: the signatures compare needs (no detail, no thumbnail) and the row.
QUERIES = pa.schema([f for f in SIGNATURES if f.name not in ("detail", "thumb")]
                    + [pa.field("row", pa.int64())])


def write_queries(sigs: Signatures, queries: pa.Table, path: Location,
                  chunk_rows: int = CHUNK_ROWS) -> None:
    """Write `queries` (light rows of `sigs` with their `row`, in row order) with their
    feature vectors, streamed from the sources as the shards' heavy columns are."""
    fv = pa.schema([SIGNATURES.field("fv")])
    stream = _Streamed(sigs, queries["row"].to_numpy(), fv)
    chunks = (_joined(queries.slice(lo, chunk_rows), stream.rows(lo, lo + chunk_rows), QUERIES)
              for lo in range(0, queries.num_rows, chunk_rows))
    write_tables(chunks, path, QUERIES, chunk_rows)


def _joined(light: pa.Table, streamed: pa.Table, schema: pa.Schema) -> pa.Table:
    """The columns of `schema` from `light` and `streamed` (rows of equal order)."""
    return pa.Table.from_arrays(
        [streamed[n] if n in streamed.column_names else light[n] for n in schema.names],
        schema=schema)


class _Streamed:
    """Columns of `schema` for the rows at `positions` of `sigs`, read range by range from
    their source row groups: a group is read at the first of its rows asked for and dropped
    after the last, so that only the groups a range spans are held."""

    def __init__(self, sigs: Signatures, positions: np.ndarray, schema: pa.Schema) -> None:
        self.sigs = sigs
        self.schema = schema
        self.source = sigs.light[SOURCE[0]].to_numpy()[positions]
        self.row = sigs.light[SOURCE[1]].to_numpy()[positions]
        self.last_use = np.full(len(sigs.sources), -1, np.int64)
        np.maximum.at(self.last_use, self.source, np.arange(len(self.source)))
        self.held: dict[int, pa.Table] = {}

    def rows(self, lo: int, hi: int) -> pa.Table:
        """The columns of positions[lo:hi], in that order: slices of the source groups where
        the rows follow them (sorted sources), taken and reordered otherwise."""
        source, row = self.source[lo:hi], self.row[lo:hi]
        order = np.argsort(source, kind="stable")
        pieces = [self._rows(int(s), row[source == s]) for s in np.unique(source)]
        grouped = concat(pieces, self.schema)  # rows in `order`
        for s in [s for s in self.held if self.last_use[s] < hi]:
            del self.held[s]
        if np.all(order[1:] > order[:-1]):
            return grouped
        return grouped.take(pa.array(np.argsort(order, kind="stable")))

    def _rows(self, s: int, rows: np.ndarray) -> pa.Table:
        """Rows `rows` of source group `s`: a slice (no copy) when they follow each other."""
        group = self._group(s)
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
            return group.slice(int(rows[0]), len(rows))
        return group.take(pa.array(rows))

    def _group(self, s: int) -> pa.Table:
        """The columns of source row group `s`, read at its first use."""
        if s not in self.held:
            group = self.sigs.sources[s]
            fs, name = arrow(group.path)
            with fs.open_input_file(name) as fh:
                parquet = pq.ParquetFile(fh, pre_buffer=False, buffer_size=1 << 20)
                present = [n for n in self.schema.names if n in parquet.schema_arrow.names]
                table = parquet.read_row_group(group.index, columns=present)
            self.held[s] = conform(table, self.schema)
        return self.held[s]
