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
import pyarrow.compute as pc

from npimage.bands import DEFAULT_THRESHOLD, bands_table, sql_params
from npimage.matching.compare import MATCH_COLUMNS
from npimage.schemas import CATALOG, IMAGE_MATCHES, PRODUCT_MATCHES, SIGNATURES
from npimage.sqlfiles import load_sql, query_script
from npimage.storage.parquet_io import read_table, write_table
from npimage.storage.store import location


def _read_shards(paths: list[Path]) -> pa.Table:
    tables = [read_table(p).cast(MATCH_COLUMNS) for p in map(location, paths) if p.exists()]
    return pa.concat_tables(tables) if tables else MATCH_COLUMNS.empty_table()


def _verified(shards: pa.Table, verified: Path | None) -> pa.Table:
    """Compare's pairs with the verification applied: score = verified score where the pair
    was checked, score_before = compare's score, verified, verify_reason."""
    con = duckdb.connect()
    con.register("shards", shards)
    ver = read_table(verified) if verified is not None and location(verified).exists() else None
    if ver is None:
        return con.sql("SELECT *, score AS score_before, false AS verified, "
                           "CAST(NULL AS VARCHAR) AS verify_reason FROM shards").to_arrow_table()
    con.register("ver", ver)
    return con.sql(
        """SELECT s.image_id, s.match_image_id, coalesce(v.score, s.score) AS score,
                  s.dah, s.ddh, s.dph, s.dfv, s.same_bytes, s.score AS score_before,
                  v.image_id IS NOT NULL AS verified, v.verify_reason
           FROM shards AS s LEFT JOIN ver AS v
             ON v.image_id = s.image_id AND v.match_image_id = s.match_image_id""").to_arrow_table()


#: Pairs a reviewer rejected: (item_id < match_id, band rejected in); see npimage.review.store.
REJECTED = pa.schema([("item_id", pa.string()), ("match_id", pa.string()), ("band", pa.string())])


def _register_rejected(con: duckdb.DuckDBPyConnection, rejected: pa.Table | None) -> None:
    """The relation `rejected_pairs` the merge SQL flags rejected pairs with."""
    table = REJECTED.empty_table() if rejected is None else rejected.select(REJECTED.names)
    con.register("rejected_pairs", table.cast(REJECTED))


def merge_image_matches(shards: list[Path], prior: Path | None, queries: Path, signatures: Path,
                        out: Path, *, client_id: str, run_id: str, top_k: int,
                        threshold: float = DEFAULT_THRESHOLD,
                        verified: Path | None = None,
                        rejected: pa.Table | None = None) -> pa.Table:
    """Combine this run's shard results (with their verification, `verified`: the verify
    stage's file) with the kept prior matches; write image_matches.

    `rejected` holds the image pairs reviewers rejected (item_id, match_id, band): their
    rows are kept with rejected = true while they score at or above that band.

    Pairs below `threshold` are dropped (compared as float32, like compare does); each
    kept pair is labelled with its band (npimage.bands), `weak` below the lowest band.
    """
    con = duckdb.connect()
    con.register("bands", bands_table())
    con.register("new_pairs", _verified(_read_shards(shards), verified))
    cols = [*MATCH_COLUMNS.names, "score_before", "verified", "verify_reason"]
    prior_table = read_table(prior, IMAGE_MATCHES, columns=cols) if prior else \
        IMAGE_MATCHES.empty_table().select(cols)
    prior_table = prior_table.set_column(  # rows of older runs: score_before = score
        prior_table.schema.get_field_index("score_before"), "score_before",
        pc.coalesce(prior_table["score_before"], prior_table["score"]))
    con.register("prior_matches", prior_table)
    _register_rejected(con, rejected)
    con.register("queries", read_table(queries, columns=["image_id"]))
    con.register("present", read_table(signatures, SIGNATURES, columns=["image_id"]))
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
