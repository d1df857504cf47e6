"""Families (#18) through the real pipeline: the demo catalogue with FV on, families read
from the NextPage backend (np_product.family), predictions in the DuckDB warehouse, the
backend and the report; incremental runs; `npimage evaluate --families`."""

from __future__ import annotations

import json
from contextlib import closing

import duckdb
import pyarrow.parquet as pq
import pytest
from pg import pg_connect
from test_backend_pipeline import _url

from npimage import backend
from npimage.cli import main
from npimage.ingest.extract import extract_catalog
from npimage.storage.runs import safe_name


def _state(data, client: str) -> dict:
    cur = json.loads((data / "clients" / safe_name(client) / "current.json").read_text())
    run = data / "clients" / safe_name(client) / "runs" / safe_name(cur["run_id"])
    return json.loads((run / "family" / "state.json").read_text())


def _warehouse(data, client: str) -> dict[str, tuple]:
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT product_id, family, predicted_family, confidence, misfiled, "
                           "evidence, predicted_run_id FROM product_family_predictions "
                           "WHERE client_id = $c", {"c": client}).fetchall()
        n_products = con.execute("SELECT count(DISTINCT product_id) FROM images "
                                 "WHERE client_id = $c", {"c": client}).fetchone()[0]
    finally:
        con.close()
    assert len(rows) == n_products
    return {r[0]: r[1:] for r in rows}


def _backend(dsn: str, client: str) -> dict[str, tuple]:
    with closing(pg_connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT product_id, family, predicted_family, misfiled, "
                    "jsonb_array_length(evidence) FROM npimage_family_prediction "
                    "WHERE client_id = %s", (client,))
        return {r[0]: r[1:] for r in cur.fetchall()}


@pytest.fixture
def seeded_families(pg_backend, small_demo, tmp_path):
    """The small demo catalogue in np_* tables, np_product.family = the demo's template."""
    res = extract_catalog("hospital", small_demo.manifest, tmp_path / "cat.parquet",
                          tmp_path / "rej.parquet", tmp_path / "fam.parquet")
    backend.seed_source(pg_backend, res.catalog)
    fams = pq.read_table(tmp_path / "fam.parquet").to_pylist()
    with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
        cur.executemany("UPDATE np_product SET family = %s WHERE client_id = 'hospital' "
                        "AND product_id = %s", [(r["family"], r["product_id"]) for r in fams])
    return pg_backend, {r["product_id"]: r["family"] for r in fams}


def test_families_from_backend_to_warehouse_backend_and_report(seeded_families, tmp_path,
                                                               capsys):
    dsn, families = seeded_families
    url = _url(dsn)
    args = ["run", "--client", "hospital", "--source", url, "--data-dir", str(tmp_path),
            "--workers", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "products predicted" in out
    wh = _warehouse(tmp_path, "hospital")
    assert {p: r[0] for p, r in wh.items()} == {p: families[p] for p in wh}
    assert all(r[1] is not None and 0 < r[2] <= 1 for r in wh.values())
    some = next(r for r in wh.values() if r[4])
    voters = json.loads(some[4])
    assert voters and {"match_image_id", "match_product_id", "family", "similarity"} <= set(
        voters[0])
    assert _backend(dsn, "hospital") == {
        p: (r[0], r[1], r[3], len(json.loads(r[4])) if r[4] else None) for p, r in wh.items()}
    assert _state(tmp_path, "hospital")["mode"] == "all"

    # the report: the suggestion and its voters on product pages, the misfiled tab
    report = tmp_path / "reports" / "hospital"
    assert (report / "list" / "misfiled-0001.html").exists()
    pages = [p.read_text() for p in (report / "p").rglob("*.html")]
    assert sum("Suggested" in p and "data-voter-image-id" in p for p in pages) == len(wh)
    index = (report / "index.html").read_text()
    assert "Possibly misfiled" in index

    # leave-one-product-out figures of the published run
    assert main(["evaluate", "--client", "hospital", "--families", "--json",
                 "--data-dir", str(tmp_path)]) == 0
    got = json.loads(capsys.readouterr().out)["families"]
    assert got["products"] == len(wh) and 0 <= got["top1"] <= got["top3"] <= 1

    # nothing changed: nothing predicted again, the predictions carried over
    assert main([*args, "--mode", "incremental", "--no-report"]) == 0
    state = _state(tmp_path, "hospital")
    assert state["mode"] == "changed" and state["predicted"] == 0
    again = _warehouse(tmp_path, "hospital")
    assert {p: r[:5] for p, r in again.items()} == {p: r[:5] for p, r in wh.items()}

    # a product refiled in the backend: the families changed, every product again
    refiled = sorted(wh)[0]
    other = next(f for f in sorted(set(families.values())) if f != families[refiled])
    with closing(pg_connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("UPDATE np_product SET family = %s WHERE client_id = 'hospital' "
                    "AND product_id = %s", (other, refiled))
    assert main([*args, "--mode", "incremental", "--no-report"]) == 0
    state = _state(tmp_path, "hospital")
    assert state["mode"] == "all" and state["predicted"] == len(wh)
    assert _backend(dsn, "hospital")[refiled][0] == other

    # switched off: no prediction published (the old ones are cleared)
    assert main([*args, "--mode", "incremental", "--no-report", "--no-families"]) == 0
    with pytest.raises(AssertionError):
        _warehouse(tmp_path, "hospital")
    assert _backend(dsn, "hospital") == {}


def test_backend_without_family_column_has_no_families(pg_backend, tmp_path):
    """A NextPage database whose np_product has no `family` column: no families, no error."""
    from npimage.backend.families import extract_families

    with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO np_client (client_id) VALUES ('c')")
        cur.execute("INSERT INTO np_product (client_id, product_id, family) "
                    "VALUES ('c', 'p1', 'Milk'), ('c', 'p2', NULL)")
    out = tmp_path / "families.parquet"
    assert extract_families(pg_backend, "c", out) == 1
    assert pq.read_table(out).to_pylist() == [
        {"client_id": "c", "product_id": "p1", "family": "Milk"},
        {"client_id": "c", "product_id": "p2", "family": None}]
    with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE np_product DROP COLUMN family")
    try:
        assert extract_families(pg_backend, "c", out) == 0
        assert not out.exists()
    finally:  # the database is shared by the session's tests: put the column back
        with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
            cur.execute("ALTER TABLE np_product ADD COLUMN family text")
