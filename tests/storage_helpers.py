"""Small published runs for the storage tests: every row names its run, so a mix shows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from npimage import schemas
from npimage.storage.layout import Layout
from npimage.storage.parquet_io import write_table
from npimage.storage.warehouse import publish


def run_files(data_dir: str, client: str, run_id: str, n: int) -> dict[str, list[Any]]:
    """Write the five tables of a run of `n` images under its run folder; their paths."""
    run = Layout.of(data_dir).run_dir(client, run_id)
    now = datetime.now(UTC)
    ids = [f"{run_id}/img{i:03d}" for i in range(n)]
    cat = pa.table({"client_id": [client] * n, "image_id": ids,
                    "product_id": [f"p{i // 2}" for i in range(n)],
                    "reference": [None] * n, "uri": [f"file:///x/{i}.jpg" for i in range(n)],
                    "size_bytes": [100] * n, "modified_at": [now] * n}, schemas.CATALOG)
    sigs = pa.Table.from_pylist(
        [dict(client_id=client, image_id=i, sha256="0" * 64, size_bytes=100, width=8,
              height=8, ahash=1, dhash=2, phash=3, fv=None, fv_model=None, computed_at=now)
         for i in ids], schemas.SIGNATURES)
    rej = pa.Table.from_pylist([dict(client_id=client, image_id=f"{run_id}/bad", uri="x",
                                     stage="extract", reason="r")], schemas.REJECTS)
    im = pa.Table.from_pylist(
        [dict(client_id=client, image_id=a, match_image_id=b, rank=1, score=0.99,
              band="same", dah=1.0, ddh=1.0, dph=1.0, dfv=None, same_bytes=False,
              run_id=run_id) for a, b in zip(ids, ids[1:] + ids[:1], strict=True)],
        schemas.IMAGE_MATCHES)
    pm = pa.Table.from_pylist(
        [dict(client_id=client, product_id="p0", match_product_id="p1", score=0.99,
              band="same", n_image_pairs=1, best_image_id=ids[0], best_match_image_id=ids[1],
              run_id=run_id)], schemas.PRODUCT_MATCHES)
    return {"images": [write_table(cat, run / "catalog.parquet")],
            "signatures": [write_table(sigs, run / "signatures/shard-00000.parquet")],
            "rejects": [write_table(rej, run / "rejects.parquet")],
            "image_matches": [write_table(im, run / "image_matches.parquet")],
            "product_matches": [write_table(pm, run / "product_matches.parquet")]}


def run_record(client: str, run_id: str, n: int) -> dict[str, Any]:
    return {"client_id": client, "run_id": run_id, "mode": "full", "fv_model": None,
            "top_k": 10, "threshold": 0.82, "weights": "default", "n_images": n,
            "n_rejects": 1, "n_computed": n, "n_image_matches": n, "n_product_matches": 1,
            "started_at": datetime.now(UTC)}


def publish_run(data_dir: str, client: str, run_id: str, n: int, **kwargs: Any) -> dict:
    """Write and publish a run of `n` images of `client`."""
    files = run_files(data_dir, client, run_id, n)
    return publish(data_dir, client, run_id, files, run_record(client, run_id, n), **kwargs)


#: One query that sees every table of every client at once: per client, the runs its rows
#: come from (must be exactly one) and the row counts (must agree with that run's size).
MIX_QUERY = """
WITH rows AS (
    SELECT client_id, split_part(image_id, '/', 1) AS run FROM images
    UNION ALL SELECT client_id, split_part(image_id, '/', 1) FROM signatures
    UNION ALL SELECT client_id, split_part(image_id, '/', 1) FROM image_matches
    UNION ALL SELECT client_id, run_id FROM product_matches
    UNION ALL SELECT client_id, split_part(image_id, '/', 1) FROM rejects
)
SELECT client_id, count(DISTINCT run) AS runs, min(run) AS run, count(*) AS n
FROM rows GROUP BY client_id ORDER BY client_id
"""
