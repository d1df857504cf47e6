"""NextPage PostgreSQL backend: read a client's catalogue, write the matches back.

The backend database holds NextPage's tables (np_client, np_product, np_reference,
np_image) and the tables npimage writes (npimage_run, npimage_image_match,
npimage_product_match, npimage_band). Every function takes `db`: a DSN string (a libpq
URI or key=value string; the function opens and closes its own connection) or an open
psycopg2 connection (used as is, left open; each function commits its own transaction,
so pass a connection with no transaction of yours in progress). In Airflow, take the DSN
from `npimage.orchestration.connection.airflow_dsn()` (the connection nextpage_backend).

Typical flow of one client's run (the npimage_* tables are created on first use):
    record_run_start(db, client, run_id, {"mode": "incremental"})
    ext = extract_catalog(db, client, run_dir / "catalog.parquet",
                          previous_catalog=baseline, incremental=True)
    ... signatures, compare, product roll-up ...
    load_matches(db, client, run_id, image_matches, product_matches,
                 {**ext.counts(), "fv_model": ..., "threshold": ..., "top_k": ...})
ext.counts() carries the watermark that the next incremental run starts from.
"""

from npimage.backend.connection import Db, connection
from npimage.backend.decisions import write_decisions
from npimage.backend.extract import BackendExtract, extract_catalog, product_names
from npimage.backend.load import load_matches
from npimage.backend.runs import (
    get_run,
    last_successful_run,
    last_watermark,
    record_run_end,
    record_run_start,
)
from npimage.backend.schema import apply_schema, create_source_schema, list_clients, seed_source

__all__ = [
    "BackendExtract",
    "Db",
    "apply_schema",
    "connection",
    "create_source_schema",
    "extract_catalog",
    "get_run",
    "last_successful_run",
    "last_watermark",
    "list_clients",
    "load_matches",
    "product_names",
    "record_run_end",
    "record_run_start",
    "seed_source",
    "write_decisions",
]
