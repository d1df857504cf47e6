"""NextPage PostgreSQL backend against a real server: extract, incremental extract, loads.

Each test takes `pg_backend` (tests/pg.py): a clean backend in a database created for the
test session. SQL written here only sets up and inspects; the code under test uses its
sql/postgres files.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pg import pg_connect

from npimage.backend import (
    apply_schema,
    extract_catalog,
    get_run,
    last_watermark,
    list_clients,
    load_matches,
    record_run_end,
    record_run_start,
    seed_source,
)
from npimage.backend.load import LOCK_CLASS
from npimage.bands import BANDS, band_of
from npimage.orchestration.connection import airflow_dsn
from npimage.schemas import CATALOG, IMAGE_MATCHES, PRODUCT_MATCHES
from npimage.storage.parquet_io import write_table

pytestmark = pytest.mark.postgres

T0 = datetime(2024, 1, 1, tzinfo=UTC)
INJECTED = "x'); DROP TABLE np_image;--"


# ---------------------------------------------------------------- data builders


def catalog(client_id: str, products: dict[str, list[str]],
            gtins: dict[str, str | None] | None = None, start: datetime = T0) -> pa.Table:
    """Catalog rows: one per image, updated one hour apart from `start`."""
    rows = []
    for product_id, image_ids in products.items():
        gtin = (gtins or {}).get(product_id, f"gtin-{product_id}")
        for image_id in image_ids:
            rows.append({"client_id": client_id, "image_id": image_id, "product_id": product_id,
                         "reference": gtin, "uri": f"/images/{image_id}.jpg", "size_bytes": None,
                         "modified_at": start + timedelta(hours=len(rows))})
    return pa.Table.from_pylist(rows, schema=CATALOG)


def simple_catalog(client_id: str, n_products: int = 4, per_product: int = 3) -> pa.Table:
    return catalog(client_id, {f"prod-{p}": [f"img-{p}-{i}" for i in range(per_product)]
                               for p in range(n_products)})


def matches(cat: pa.Table, run_id: str, score: float) -> tuple[pa.Table, pa.Table]:
    """Contract rows pairing image 2k with image 2k+1 (both directions) and their products."""
    client_id = cat["client_id"][0].as_py()
    ids, prods = cat["image_id"].to_pylist(), cat["product_id"].to_pylist()
    images, products = [], {}
    for a in range(0, len(ids) - 1, 2):
        for x, y in ((a, a + 1), (a + 1, a)):
            images.append({"client_id": client_id, "image_id": ids[x], "match_image_id": ids[y],
                           "rank": 1, "score": score, "band": band_of(score), "dah": score,
                           "ddh": score, "dph": score, "dfv": None, "same_bytes": False,
                           "run_id": run_id})
            if prods[x] != prods[y]:
                products[(prods[x], prods[y])] = {
                    "client_id": client_id, "product_id": prods[x], "match_product_id": prods[y],
                    "score": score, "band": band_of(score), "n_image_pairs": 1,
                    "best_image_id": ids[x], "best_match_image_id": ids[y], "run_id": run_id}
    return (pa.Table.from_pylist(images, schema=IMAGE_MATCHES),
            pa.Table.from_pylist(list(products.values()), schema=PRODUCT_MATCHES))


def write_matches(tmp: Path, name: str, tables: tuple[pa.Table, pa.Table]) -> tuple[Path, Path]:
    return (write_table(tables[0], tmp / f"{name}-image.parquet", IMAGE_MATCHES),
            write_table(tables[1], tmp / f"{name}-product.parquet", PRODUCT_MATCHES))


def seed(dsn: str, tmp: Path, cat: pa.Table, name: str = "seed") -> None:
    seed_source(dsn, write_table(cat, tmp / f"{name}.parquet", CATALOG))


# ---------------------------------------------------------------- inspection helpers


def _f32(value: Any) -> Any:
    """Compare float4 columns at float32 precision, whichever side they come from."""
    return float(np.float32(value)) if isinstance(value, float) else value


def rows_of(table: pa.Table) -> list[tuple]:
    """Rows of an Arrow table as sorted tuples (floats at float32 precision)."""
    return sorted(tuple(_f32(v) for v in row.values()) for row in table.to_pylist())


def db_rows(dsn: str, table: str, schema: pa.Schema, client_id: str) -> list[tuple]:
    """The client's rows of a match table, columns of `schema`, as sorted tuples."""
    cols = ", ".join(schema.names)
    with closing(pg_connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {cols} FROM {table} WHERE client_id = %s", (client_id,))
        return sorted(tuple(_f32(v) for v in row) for row in cur.fetchall())


def image_rows(dsn: str, client_id: str) -> list[tuple]:
    return db_rows(dsn, "npimage_image_match", IMAGE_MATCHES, client_id)


def product_rows(dsn: str, client_id: str) -> list[tuple]:
    return db_rows(dsn, "npimage_product_match", PRODUCT_MATCHES, client_id)


def sql(dsn: str, query: str, *params: Any) -> list[tuple]:
    with closing(pg_connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


def read_catalog(path: Path) -> list[dict]:
    return pq.read_table(path).cast(CATALOG).sort_by("image_id").to_pylist()


def in_thread(fn: Callable[..., Any], *args: Any) -> tuple[threading.Thread, list]:
    """Start fn(*args) in a thread; the list receives its result or its exception."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(fn(*args))
        except Exception as exc:  # handed to the test through `outcome`
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_blocked_loads(dsn: str, wait_event: str, count: int = 1) -> list[int]:
    """Pids of `count` npimage backends of this database waiting on `wait_event` locks."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = sql(dsn, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'npimage' AND wait_event_type = 'Lock'"
                    " AND wait_event = %s", wait_event)
        if len(found) >= count:
            return [row[0] for row in found]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} npimage loads blocked on {wait_event} in 60 s")


# ---------------------------------------------------------------- schema


def test_apply_schema_is_idempotent_and_lists_bands(pg_backend: str) -> None:
    apply_schema(pg_backend)
    with closing(pg_connect(pg_backend, autocommit=False)) as load, closing(
            pg_connect(pg_backend)) as other:
        # a load in progress holds this lock; apply_schema must not wait for it
        load.cursor().execute("LOCK TABLE npimage_image_match, npimage_product_match,"
                              " npimage_run IN ROW EXCLUSIVE MODE")
        other.cursor().execute("SET lock_timeout = '5s'")
        apply_schema(other)
        load.rollback()
    bands = sql(pg_backend, "SELECT band, lower_bound, rank FROM npimage_band ORDER BY rank")
    assert [(b, _f32(lo)) for b, lo, _ in bands] == [
        *((b, _f32(lo)) for b, lo in BANDS), ("weak", 0.0)]


# ---------------------------------------------------------------- extract


def test_full_extract_streams_the_client_catalogue(pg_backend: str, tmp_path: Path) -> None:
    cat_a, cat_b = simple_catalog("A"), simple_catalog("B", n_products=2)
    seed(pg_backend, tmp_path, pa.concat_tables([cat_a, cat_b]))
    out = tmp_path / "out" / "catalog.parquet"
    ext = extract_catalog(pg_backend, "A", out, batch_rows=5)  # several batches
    assert read_catalog(out) == cat_a.sort_by("image_id").to_pylist()
    assert pq.read_schema(out) == CATALOG
    assert (ext.mode, ext.n_images, ext.n_changed, ext.n_deleted) == ("full", 12, 12, 0)
    assert ext.watermark == max(cat_a["modified_at"].to_pylist())
    assert [p.name for p in out.parent.iterdir()] == ["catalog.parquet"]  # no scratch left
    assert list_clients(pg_backend) == ["A", "B"]


def test_incremental_extract_after_inserts_updates_deletes(pg_backend: str,
                                                          tmp_path: Path) -> None:
    client = "C"
    seed(pg_backend, tmp_path, simple_catalog(client))  # 12 images, 4 products of 3
    first = extract_catalog(pg_backend, client, tmp_path / "r1" / "catalog.parquet")
    load_matches(pg_backend, client, "r1", *write_matches(tmp_path, "r1", matches(
        pa.Table.from_pylist(read_catalog(first.catalog), CATALOG), "r1", 0.93)),
        first.counts())
    assert last_watermark(pg_backend, client) == first.watermark

    now = datetime.now(UTC)
    seed(pg_backend, tmp_path, catalog(client, {"prod-new": ["img-new-0", "img-new-1"]},
                                       start=now), "inserts")
    sql(pg_backend, "UPDATE np_image SET uri = uri || '?v=2', updated_at = now()"
        " WHERE client_id = %s AND image_id = ANY(%s)", client, ["img-0-0", "img-3-0"])
    sql(pg_backend, "DELETE FROM np_image WHERE client_id = %s AND image_id = ANY(%s)",
        client, ["img-2-0", "img-2-1"])
    # prod-1's reference moves to prod-0: its images change product, updated_at untouched
    sql(pg_backend, "UPDATE np_reference SET product_id = 'prod-0'"
        " WHERE client_id = %s AND product_id = 'prod-1'", client)

    second = extract_catalog(pg_backend, client, tmp_path / "r2" / "catalog.parquet",
                             previous_catalog=first.catalog, incremental=True)
    full = extract_catalog(pg_backend, client, tmp_path / "full" / "catalog.parquet")
    assert read_catalog(second.catalog) == read_catalog(full.catalog)
    assert second.mode == "incremental"
    assert second.since == first.watermark - timedelta(minutes=5)
    # 2 inserted + 2 updated + 3 moved; the newest seeded row is re-read by the overlap
    # window but, unchanged, not counted
    assert (second.n_images, second.n_changed, second.n_deleted) == (12, 7, 2)
    assert second.n_fetched == 5
    assert second.watermark > now - timedelta(minutes=1)

    # the run's matches are computed on the new catalogue: deleted images leave the backend
    new_cat = pa.Table.from_pylist(read_catalog(second.catalog), CATALOG)
    load_matches(pg_backend, client, "r2", *write_matches(tmp_path, "r2",
                                                          matches(new_cat, "r2", 0.96)),
                 second.counts())
    loaded = {r[1] for r in image_rows(pg_backend, client)} | {
        r[2] for r in image_rows(pg_backend, client)}
    assert loaded == set(new_cat["image_id"].to_pylist())
    assert not loaded & {"img-2-0", "img-2-1"}
    run = get_run(pg_backend, client, "r2")
    assert (run["status"], run["mode"], run["n_changed"], run["n_deleted"]) == (
        "success", "incremental", 7, 2)
    assert last_watermark(pg_backend, client) == second.watermark

    third = extract_catalog(pg_backend, client, tmp_path / "r3" / "catalog.parquet",
                            previous_catalog=second.catalog, incremental=True)
    assert (third.mode, third.n_images, third.n_changed, third.n_deleted) == (
        "incremental", 12, 0, 0)
    assert read_catalog(third.catalog) == read_catalog(full.catalog)


def test_incremental_refetches_rows_missing_from_an_older_baseline(pg_backend: str,
                                                                  tmp_path: Path) -> None:
    cat = simple_catalog("D")
    seed(pg_backend, tmp_path, cat)
    full = extract_catalog(pg_backend, "D", tmp_path / "full.parquet")
    record_run_end(pg_backend, "D", "r1", "success", {"watermark": full.watermark})
    # a baseline without two old, unchanged images (e.g. the catalogue of an older run)
    baseline = write_table(cat.filter(pa.array([i not in (1, 5) for i in range(12)])),
                           tmp_path / "baseline.parquet", CATALOG)
    ext = extract_catalog(pg_backend, "D", tmp_path / "inc.parquet", previous_catalog=baseline,
                          incremental=True, overlap=timedelta(0))
    assert read_catalog(ext.catalog) == read_catalog(full.catalog)
    assert (ext.mode, ext.n_changed, ext.n_deleted, ext.n_fetched) == ("incremental", 2, 0, 2)


def test_incremental_without_a_successful_run_is_a_full_extract(pg_backend: str,
                                                                tmp_path: Path) -> None:
    cat = simple_catalog("E", n_products=2)
    seed(pg_backend, tmp_path, cat)
    baseline = write_table(cat.slice(0, 3), tmp_path / "baseline.parquet", CATALOG)
    record_run_end(pg_backend, "E", "r0", "failed", error="boom")
    ext = extract_catalog(pg_backend, "E", tmp_path / "c.parquet", previous_catalog=baseline,
                          incremental=True)
    assert (ext.mode, ext.n_images, ext.n_changed, ext.n_deleted, ext.n_fetched) == (
        "full", 6, 3, 0, 6)
    assert ext.to_dict()["watermark"] == ext.watermark.isoformat()


# ---------------------------------------------------------------- load


def test_full_run_loads_matches_and_records_the_run(pg_backend: str, tmp_path: Path) -> None:
    client = "F"
    seed(pg_backend, tmp_path, simple_catalog(client))
    record_run_start(pg_backend, client, "run-1", {"mode": "full"})
    assert get_run(pg_backend, client, "run-1")["status"] == "running"
    ext = extract_catalog(pg_backend, client, tmp_path / "catalog.parquet")
    tables = matches(pa.Table.from_pylist(read_catalog(ext.catalog), CATALOG), "run-1", 0.97)
    info = {**ext.counts(), "model": "efficientnet-lite0", "top_k": 10,
            "thresholds": {"threshold": 0.82, "bands": dict(BANDS)}}
    result = load_matches(pg_backend, client, "run-1", *write_matches(tmp_path, "m", tables),
                          info)
    assert result == {"client_id": client, "run_id": "run-1", "status": "success",
                      "n_image_matches": 12, "n_product_matches": 4}
    assert image_rows(pg_backend, client) == rows_of(tables[0])
    assert product_rows(pg_backend, client) == rows_of(tables[1])
    run = get_run(pg_backend, client, "run-1")
    assert run["status"] == "success" and run["finished_at"] >= run["started_at"]
    assert (run["n_images"], run["n_image_matches"], run["n_product_matches"]) == (12, 12, 4)
    assert (run["model"], run["thresholds"]["threshold"], run["details"]) == (
        "efficientnet-lite0", 0.82, {"top_k": 10})
    assert run["watermark"] == ext.watermark
    # the docs' example: products to merge, retouched band or better
    above = sql(pg_backend, "SELECT m.product_id, m.match_product_id FROM npimage_product_match m"
                " JOIN npimage_band b ON b.band = m.band WHERE m.client_id = %s AND b.rank <="
                " (SELECT rank FROM npimage_band WHERE band = 'retouched')", client)
    assert len(above) == 4


def test_killed_load_keeps_previous_matches_and_retry_replaces(pg_backend: str,
                                                               tmp_path: Path) -> None:
    client = "G"
    cat = simple_catalog(client)
    old = matches(cat, "run-1", 0.91)
    load_matches(pg_backend, client, "run-1", *write_matches(tmp_path, "old", old))
    new = matches(cat.slice(0, 8), "run-2", 0.99)
    new_files = write_matches(tmp_path, "new", new)

    # pause the load between its image and product swaps, then kill its connection
    with closing(pg_connect(pg_backend, autocommit=False)) as blocker:
        blocker.cursor().execute("LOCK TABLE npimage_product_match IN SHARE MODE")
        thread, outcome = in_thread(load_matches, pg_backend, client, "run-2", *new_files)
        [pid] = wait_for_blocked_loads(pg_backend, "relation")
        held = sql(pg_backend, "SELECT mode FROM pg_locks WHERE pid = %s"
                   " AND relation = 'npimage_image_match'::regclass", pid)
        assert ("RowExclusiveLock",) in held  # it has rewritten the image matches already
        # a reader meanwhile sees the old matches only
        assert image_rows(pg_backend, client) == rows_of(old[0])
        assert sql(pg_backend, "SELECT pg_terminate_backend(%s)", pid) == [(True,)]
        thread.join(60)
        blocker.rollback()
    assert not thread.is_alive()
    assert isinstance(outcome[0], psycopg2.OperationalError)
    assert image_rows(pg_backend, client) == rows_of(old[0])
    assert product_rows(pg_backend, client) == rows_of(old[1])
    failed = get_run(pg_backend, client, "run-2")
    assert failed["status"] == "failed" and "terminat" in failed["error"]

    for _ in range(2):  # a retry, then a retry of the retry: same result, no duplicate
        load_matches(pg_backend, client, "run-2", *new_files)
        assert image_rows(pg_backend, client) == rows_of(new[0])
        assert product_rows(pg_backend, client) == rows_of(new[1])
    assert get_run(pg_backend, client, "run-2")["error"] is None


def test_failing_loads_keep_previous_matches(pg_backend: str, tmp_path: Path) -> None:
    client = "H"
    cat = simple_catalog(client)
    old = matches(cat, "run-1", 0.91)
    load_matches(pg_backend, client, "run-1", *write_matches(tmp_path, "old", old))

    images, products = matches(cat, "run-2", 0.99)
    duplicated = pa.concat_tables([products, products.slice(0, 1)])  # fails after image swap
    with pytest.raises(psycopg2.errors.UniqueViolation):
        load_matches(pg_backend, client, "run-2",
                     *write_matches(tmp_path, "dup", (images, duplicated)))
    foreign = pa.concat_tables([images, matches(simple_catalog("other"), "run-2", 0.99)[0]])
    with pytest.raises(ValueError, match="client_id"):  # refused in the middle of COPY
        load_matches(pg_backend, client, "run-3", *write_matches(tmp_path, "foreign",
                                                                 (foreign, products)),
                     batch_rows=4)
    assert image_rows(pg_backend, client) == rows_of(old[0])
    assert product_rows(pg_backend, client) == rows_of(old[1])
    assert [get_run(pg_backend, client, r)["status"] for r in ("run-2", "run-3")] == [
        "failed", "failed"]


def test_two_clients_loaded_at_the_same_time_stay_separate(pg_backend: str,
                                                           tmp_path: Path) -> None:
    cat_a, cat_b = simple_catalog("A"), simple_catalog("B", n_products=3)
    a1, a2 = matches(cat_a, "a1", 0.91), matches(cat_a.slice(0, 6), "a2", 0.99)
    b1, b2 = matches(cat_b, "b1", 0.92), matches(cat_b.slice(2), "b2", 0.95)
    load_matches(pg_backend, "A", "a1", *write_matches(tmp_path, "a1", a1))
    load_matches(pg_backend, "B", "b1", *write_matches(tmp_path, "b1", b1))

    # A's load stages its rows and waits on A's lock while B's load runs through
    with closing(pg_connect(pg_backend)) as blocker:
        blocker.cursor().execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, "A"))
        thread, outcome = in_thread(load_matches, pg_backend, "A", "a2",
                                    *write_matches(tmp_path, "a2", a2))
        wait_for_blocked_loads(pg_backend, "advisory")
        load_matches(pg_backend, "B", "b2", *write_matches(tmp_path, "b2", b2))
        assert image_rows(pg_backend, "A") == rows_of(a1[0])
        assert image_rows(pg_backend, "B") == rows_of(b2[0])
        blocker.cursor().execute("SELECT pg_advisory_unlock_all()")
        thread.join(60)
    assert outcome and outcome[0]["status"] == "success"
    assert (image_rows(pg_backend, "A"), product_rows(pg_backend, "A")) == (
        rows_of(a2[0]), rows_of(a2[1]))
    assert (image_rows(pg_backend, "B"), product_rows(pg_backend, "B")) == (
        rows_of(b2[0]), rows_of(b2[1]))

    # free-running: each client reloaded in its own thread, alternately with both runs
    files = {c: [write_matches(tmp_path, f"{c}{i}", m) for i, m in enumerate(ms)]
             for c, ms in (("A", (a1, a2)), ("B", (b1, b2)))}
    runs = [in_thread(lambda c=c: [load_matches(pg_backend, c, f"{c}-{i}", *files[c][i % 2])
                                   for i in range(5)]) for c in ("A", "B")]
    for thread, outcome in runs:
        thread.join(120)
        assert [r["status"] for r in outcome[0]] == ["success"] * 5
    assert image_rows(pg_backend, "A") == rows_of(a1[0])  # run 4 of A loaded a1's files
    assert image_rows(pg_backend, "B") == rows_of(b1[0])
    assert sql(pg_backend, "SELECT count(*) FROM npimage_run WHERE status = 'success'") == [
        (14,)]


def test_concurrent_loads_of_one_client_never_mix(pg_backend: str, tmp_path: Path) -> None:
    cat = simple_catalog("M")
    first, second = matches(cat.slice(0, 6), "m1", 0.91), matches(cat.slice(6), "m2", 0.99)
    with closing(pg_connect(pg_backend)) as blocker:  # hold both loads at the lock
        blocker.cursor().execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, "M"))
        runs = [in_thread(load_matches, pg_backend, "M", name, *write_matches(tmp_path, name, m))
                for name, m in (("m1", first), ("m2", second))]
        wait_for_blocked_loads(pg_backend, "advisory", count=2)
        blocker.cursor().execute("SELECT pg_advisory_unlock_all()")
        for thread, outcome in runs:
            thread.join(60)
            assert outcome[0]["status"] == "success"
    # the loads ran one after the other: the rows are those of exactly one of them
    assert image_rows(pg_backend, "M") in (rows_of(first[0]), rows_of(second[0]))
    assert product_rows(pg_backend, "M") in (rows_of(first[1]), rows_of(second[1]))


# ---------------------------------------------------------------- identifiers and connections


def test_injection_shaped_ids_are_plain_text(pg_backend: str, tmp_path: Path) -> None:
    products = {
        "p'); DELETE FROM np_product;--": ["i'; DROP TABLE npimage_run;--", "a,b\"c"],
        'p"quoted",comma': ["line\nbreak", "\\."],
        "p\\back\tslash": ["' OR '1'='1", "ünï ☃ %s %(x)s"],
    }
    gtins = {'p"quoted",comma': None, "p\\back\tslash": ""}  # NULL and '' stay apart
    cat = catalog(INJECTED, products, gtins)
    seed(pg_backend, tmp_path, cat)
    ext = extract_catalog(pg_backend, INJECTED, tmp_path / "c.parquet")
    assert read_catalog(ext.catalog) == cat.sort_by("image_id").to_pylist()
    tables = matches(cat, "run-'1'", 0.95)
    load_matches(pg_backend, INJECTED, "run-'1'", *write_matches(tmp_path, "m", tables))
    assert image_rows(pg_backend, INJECTED) == rows_of(tables[0])
    assert product_rows(pg_backend, INJECTED) == rows_of(tables[1])
    assert list_clients(pg_backend) == [INJECTED]
    assert sql(pg_backend, "SELECT count(*) FROM np_image") == [(6,)]
    assert sql(pg_backend, "SELECT count(*) FROM np_product") == [(3,)]
    assert get_run(pg_backend, INJECTED, "run-'1'")["status"] == "success"


def test_functions_accept_an_open_connection(pg_backend: str, tmp_path: Path) -> None:
    seed(pg_backend, tmp_path, simple_catalog("K", n_products=2))
    with closing(pg_connect(pg_backend, autocommit=True)) as conn:
        ext = extract_catalog(conn, "K", tmp_path / "c.parquet")
        tables = matches(pa.Table.from_pylist(read_catalog(ext.catalog), CATALOG), "r", 0.9)
        load_matches(conn, "K", "r", *write_matches(tmp_path, "m", tables), ext.counts())
        assert not conn.closed and conn.autocommit
        assert last_watermark(conn, "K") == ext.watermark
    assert image_rows(pg_backend, "K") == rows_of(tables[0])


def test_airflow_connection_gives_a_working_dsn(pg_backend: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("airflow.sdk")
    p = psycopg2.extensions.parse_dsn(pg_backend)
    monkeypatch.setenv("AIRFLOW_CONN_NEXTPAGE_BACKEND",
                       f"postgresql://{p['user']}@{p['host']}:{p.get('port', 5432)}/{p['dbname']}"
                       "?sslmode=disable&connect_timeout=7&cursor=dictcursor")
    dsn = airflow_dsn()
    assert "cursor" not in dsn and "sslmode=disable" in dsn
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        assert cur.fetchone()[0] == p["dbname"]
    assert list_clients(dsn) == []


def test_run_lifecycle_keeps_first_start_and_clears_error(pg_backend: str) -> None:
    sql(pg_backend, "DROP TABLE npimage_run, npimage_image_match, npimage_product_match,"
        " npimage_band, npimage_decision, npimage_schema_version")  # never written to
    assert last_watermark(pg_backend, "L") is None
    record_run_start(pg_backend, "L", "r", {"mode": "full", "n_images": 3})  # creates them
    started = get_run(pg_backend, "L", "r")["started_at"]
    record_run_end(pg_backend, "L", "r", "failed", error="disk full")
    assert get_run(pg_backend, "L", "r")["error"] == "disk full"
    record_run_start(pg_backend, "L", "r")  # the retry
    run = get_run(pg_backend, "L", "r")
    assert (run["status"], run["error"], run["finished_at"], run["n_images"]) == (
        "running", None, None, 3)
    assert run["started_at"] == started
    assert last_watermark(pg_backend, "L") is None
    with pytest.raises(ValueError, match="status"):
        record_run_end(pg_backend, "L", "r", "done")
    # the pipeline's own key names land in their columns
    record_run_end(pg_backend, "L", "r", "success", {
        "fv_model": "efficientnet-lite0", "threshold": 0.82, "top_k": 10, "weights": "default",
        "n_rejects": 2, "started_at": T0, "watermark": "2024-01-02T00:00:00+00:00"})
    run = get_run(pg_backend, "L", "r")
    assert (run["model"], run["details"], run["started_at"]) == (
        "efficientnet-lite0", {"n_rejects": 2}, started)
    assert run["thresholds"] == {"threshold": 0.82, "top_k": 10, "weights": "default",
                                 "bands": dict(BANDS)}
    assert last_watermark(pg_backend, "L") == T0 + timedelta(days=1)
