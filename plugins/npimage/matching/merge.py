"""Merge the compare shards into image_matches, and roll them up into product_matches.

Both steps are SQL (sql/duckdb/merge_image_matches.sql, product_matches.sql) run by an
in-memory DuckDB over Arrow tables: the per-image top-k, the symmetric closure, ranks and
bands are set operations that SQL states plainly. The bands and the threshold come from
npimage.bands (a relation and a float32 parameter), the one definition Python shares.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from npimage.bands import DEFAULT_THRESHOLD, bands_table, sql_params
from npimage.matching.compare import MATCH_COLUMNS
from npimage.schemas import CATALOG, IMAGE_MATCHES, PRODUCT_MATCHES, SIGNATURES
from npimage.sqlfiles import load_sql, query_script
from npimage.storage.parquet_io import read_table, write_table
from npimage.storage.store import location


def _read_shards(paths: list[Path]) -> pa.Table:
    tables = [read_table(p).cast(MATCH_COLUMNS) for p in map(location, paths) if p.exists()]
    return pa.concat_tables(tables) if tables else MATCH_COLUMNS.empty_table()


#: Pairs a reviewer rejected: (item_id < match_id, band rejected in); see npimage.review.store.
REJECTED = pa.schema([("item_id", pa.string()), ("match_id", pa.string()), ("band", pa.string())])


def _register_rejected(con: duckdb.DuckDBPyConnection, rejected: pa.Table | None) -> None:
    """The relation `rejected_pairs` the merge SQL flags rejected pairs with."""
    table = REJECTED.empty_table() if rejected is None else rejected.select(REJECTED.names)
    con.register("rejected_pairs", table.cast(REJECTED))


def merge_image_matches(shards: list[Path], prior: Path | None, queries: Path, signatures: Path,
                        out: Path, *, client_id: str, run_id: str, top_k: int,
                        threshold: float = DEFAULT_THRESHOLD,
                        rejected: pa.Table | None = None) -> pa.Table:
    """Combine this run's shard results with the kept prior matches; write image_matches.

    `rejected` holds the image pairs reviewers rejected (item_id, match_id, band): their
    rows are kept with rejected = true while they score at or above that band.

    Pairs below `threshold` are dropped (compared as float32, like compare does); each
    kept pair is labelled with its band (npimage.bands), `weak` below the lowest band.
    """
    con = duckdb.connect()
    con.register("bands", bands_table())
    con.register("new_pairs", _read_shards(shards))
    # Only the compared columns: a baseline written before a column was added still reads.
    prior_table = (read_table(prior, IMAGE_MATCHES, columns=MATCH_COLUMNS.names) if prior
                   else MATCH_COLUMNS.empty_table())
    con.register("prior_matches", prior_table.cast(MATCH_COLUMNS))
    _register_rejected(con, rejected)
    con.register("queries", read_table(queries, columns=["image_id"]))
    con.register("present", read_table(signatures, SIGNATURES).select(["image_id"]))
    params = {"client_id": client_id, "run_id": run_id, "top_k": top_k,
              **sql_params(threshold)}
    result = query_script(con, load_sql("duckdb", "merge_image_matches"), params)
    write_table(result, out, IMAGE_MATCHES)
    return result


def roll_up_products(image_matches: Path, catalog: Path, out: Path, *, client_id: str,
                     run_id: str, rejected: pa.Table | None = None) -> pa.Table:
    """Product matches from image matches (sql/duckdb/product_matches.sql).

    `rejected` holds the product pairs reviewers rejected (item_id, match_id, band).
    """
    con = duckdb.connect()
    _register_rejected(con, rejected)
    con.register("bands", bands_table())
    con.register("image_matches", read_table(image_matches, IMAGE_MATCHES))
    con.register("catalog", read_table(catalog, CATALOG).select(["image_id", "product_id"]))
    params = {"client_id": client_id, "run_id": run_id}
    result = query_script(con, load_sql("duckdb", "product_matches"), params)
    write_table(result, out, PRODUCT_MATCHES)
    return result
