"""The pipeline with the NextPage PostgreSQL backend as source and target: CLI and DAG."""

from __future__ import annotations

import os
from contextlib import closing

import psycopg2.extensions
import pytest
from conftest import ROOT
from helpers import check_published_run, table_rows
from pg import pg_connect

from npimage import backend
from npimage.cli import main
from npimage.ingest.extract import extract_catalog


def _url(dsn: str) -> str:
    p = psycopg2.extensions.parse_dsn(dsn)
    user, port = p.get("user", "postgres"), p.get("port", 5432)
    return f"postgresql://{user}@{p['host']}:{port}/{p['dbname']}"


@pytest.fixture
def seeded(pg_backend, small_demo, tmp_path):
    """The small demo catalogue loaded into np_* tables for client 'hospital'."""
    res = extract_catalog("hospital", small_demo.manifest, tmp_path / "cat.parquet",
                          tmp_path / "rej.parquet")
    backend.seed_source(pg_backend, res.catalog)
    return pg_backend


def _backend_pairs(dsn: str, client: str) -> set[tuple[str, str, str]]:
    with closing(pg_connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT image_id, match_image_id, band FROM npimage_image_match "
                    "WHERE client_id = %s", (client,))
        return set(cur.fetchall())


def _run_status(dsn: str, client: str) -> list[tuple[str, str]]:
    with closing(pg_connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT mode, status FROM npimage_run WHERE client_id = %s "
                    "ORDER BY started_at", (client,))
        return cur.fetchall()


def test_cli_run_from_backend_loads_matches_back(seeded, small_demo, tmp_path):
    url = _url(seeded)
    assert main(["run", "--client", "hospital", "--source", url, "--data-dir", str(tmp_path),
                 "--no-fv", "--no-report", "--workers", "1"]) == 0
    wh = tmp_path / "warehouse.duckdb"
    assert check_published_run(wh, "hospital", small_demo.truth)["missed"] == 0
    local = {(r[1], r[2], r[5]) for r in table_rows(wh, "image_matches", "hospital")}
    assert _backend_pairs(seeded, "hospital") == local
    assert _run_status(seeded, "hospital") == [("full", "success")]

    # a deleted image leaves the match tables at the next incremental run
    gone = sorted(local)[0][0]
    with closing(pg_connect(seeded)) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM np_image WHERE client_id = 'hospital' AND image_id = %s",
                    (gone,))
    assert main(["run", "--client", "hospital", "--source", url, "--data-dir", str(tmp_path),
                 "--no-fv", "--no-report", "--workers", "1", "--mode", "incremental"]) == 0
    pairs = _backend_pairs(seeded, "hospital")
    assert pairs and all(gone not in (a, b) for a, b, _ in pairs)
    assert _run_status(seeded, "hospital")[-1] == ("incremental", "success")


def test_cli_folder_source_with_backend_target(pg_backend, small_demo, tmp_path):
    assert main(["run", "--client", "folder-client", "--source", str(small_demo.manifest),
                 "--backend", _url(pg_backend), "--data-dir", str(tmp_path), "--no-fv",
                 "--no-report", "--workers", "1"]) == 0
    assert len(_backend_pairs(pg_backend, "folder-client")) > 0


def test_dag_reads_and_loads_through_the_airflow_connection(seeded, small_demo, airflow_db,
                                                             tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW_CONN_NEXTPAGE_BACKEND", _url(seeded))
    monkeypatch.setenv("NPIMAGE_DATA_DIR", str(tmp_path))
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["npimage_dedup"]
    run = dag.test(run_conf={"client_id": "hospital", "source": "nextpage",
                             "backend": "nextpage", "fv": False})
    assert run.state == "success"
    wh = tmp_path / "warehouse.duckdb"
    local = {(r[1], r[2], r[5]) for r in table_rows(wh, "image_matches", "hospital")}
    assert local and _backend_pairs(seeded, "hospital") == local
    # the DSN (a secret in real deployments) never reaches the run context on disk
    contexts = list((tmp_path / "clients").rglob("context.json"))
    assert contexts and all("airflow-conn:nextpage_backend" in p.read_text() for p in contexts)
    assert os.environ["AIRFLOW_CONN_NEXTPAGE_BACKEND"] not in contexts[0].read_text()
