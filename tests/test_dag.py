"""The Airflow DAG: it loads cleanly, and runs end to end for real with dag.test()."""

from __future__ import annotations

import duckdb
import pytest
from conftest import ROOT
from helpers import check_published_run, table_rows

from npimage.storage.warehouse import TABLES


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_dag_folder_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "npimage_dedup" in dagbag.dag_ids


def test_dag_shape(dagbag):
    dag = dagbag.dags["npimage_dedup"]
    assert set(dag.params) >= {"client_id", "source", "mode", "fv", "top_k", "threshold",
                               "families"}
    assert {t.task_id for t in dag.tasks} == {
        "extract", "plan", "signatures", "consolidate", "compare", "verify", "merge",
        "families", "publish", "report", "release_lock", "plan_text", "read_text"}
    assert dag.task_dict["verify"].upstream_task_ids == {"extract", "compare"}
    assert dag.task_dict["families"].upstream_task_ids == {"extract", "merge"}
    assert dag.task_dict["signatures"].upstream_task_ids == {"extract", "plan"}
    assert dag.task_dict["consolidate"].upstream_task_ids == {"extract", "signatures"}
    assert dag.task_dict["publish"].upstream_task_ids == {"extract", "read_text"}
    assert {"read", "text_max"} <= set(dag.params)
    assert all(t.retries >= 1 for t in dag.tasks)


def test_dag_files_do_not_import_tensorflow_at_parse_time():
    import subprocess
    import sys

    code = ("import sys; sys.path[:0] = [{!r}, {!r}]; import npimage_dedup; "
            "print('tensorflow' in sys.modules)").format(str(ROOT / "dags"), str(ROOT / "plugins"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.fixture(scope="module")
def dag_runs(airflow_db, small_demo, tmp_path_factory):
    """Two real DAG runs on the small demo catalogue: full, then incremental.

    NPIMAGE_DATA_DIR is set for these runs only (restored after: no leak into other tests).
    """
    from airflow.dag_processing.dagbag import DagBag

    data = tmp_path_factory.mktemp("dagdata")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPIMAGE_DATA_DIR", str(data))
        dag = DagBag(dag_folder=str(ROOT / "dags")).dags["npimage_dedup"]
        conf = {"client_id": "dagclient", "source": str(small_demo.manifest), "fv": False,
                "read": "codes,text", "text_max": 2}  # pack reading: OCR of 2 images a run
        first = dag.test(run_conf=conf)
        wh = data / "warehouse.duckdb"
        tables = {t: table_rows(wh, t, "dagclient") for t in (*TABLES, "image_codes")}
        second = dag.test(run_conf={**conf, "mode": "incremental"})
    return data, first, second, tables


def test_dag_run_publishes_planted_duplicates(dag_runs, small_demo):
    data, first, _, _ = dag_runs
    assert first.state == "success"
    result = check_published_run(data / "warehouse.duckdb", "dagclient", small_demo.truth)
    assert result["missed"] == 0, result["missed_rows"]
    assert (data / "reports").is_dir()
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    reads = dict(con.execute("SELECT reader, count(*) FROM image_reads "
                             "WHERE client_id = 'dagclient' GROUP BY reader").fetchall())
    con.close()
    # the warehouse holds the incremental run: 2 images OCR'd by each run (text_max), the
    # first run's 2 reused, and every image's codes
    assert reads == {"codes": small_demo.n_images, "text": 4}


def test_incremental_dag_run_computes_nothing_and_keeps_tables(dag_runs):
    data, _, second, before = dag_runs
    assert second.state == "success"
    wh = data / "warehouse.duckdb"
    assert {t: table_rows(wh, t, "dagclient") for t in (*TABLES, "image_codes")} == before
    con = duckdb.connect(str(wh), read_only=True)
    computed = con.execute("SELECT mode, n_computed FROM runs WHERE client_id = 'dagclient' "
                           "ORDER BY published_at").fetchall()
    con.close()
    assert computed[0][0] == "full" and computed[0][1] == len(before["signatures"])
    assert computed[-1] == ("incremental", 0)


def test_nightly_dag_triggers_one_incremental_run_per_active_client(
        airflow_db, pg_backend, monkeypatch):
    from contextlib import closing

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from pg import pg_connect
    from test_backend_pipeline import _url

    with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO np_client VALUES ('north', 'North', true), "
                    "('south', 'South', true), ('gone', 'Gone', false)")
    monkeypatch.setenv("AIRFLOW_CONN_NEXTPAGE_BACKEND", _url(pg_backend))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    run = bag.dags["npimage_nightly"].test()
    assert run.state == "success"
    with create_session() as session:
        confs = [r.conf for r in session.query(DagRun).filter(
            DagRun.dag_id == "npimage_dedup", DagRun.run_id.like("nightly__%")).all()]
    assert sorted(c["client_id"] for c in confs) == ["north", "south"]
    assert all(c["mode"] == "incremental" and c["source"] == "nextpage" for c in confs)


def test_nightly_by_hand_without_logical_date_twice_starts_distinct_runs(
        airflow_db, pg_backend, monkeypatch):
    """A manual nightly has no logical date; a second one the same day starts its own runs."""
    from contextlib import closing

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from pg import pg_connect
    from test_backend_pipeline import _url

    with closing(pg_connect(pg_backend)) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO np_client VALUES ('east', 'East', true), ('west', 'West', true)")
    monkeypatch.setenv("AIRFLOW_CONN_NEXTPAGE_BACKEND", _url(pg_backend))
    nightly = DagBag(dag_folder=str(ROOT / "dags")).dags["npimage_nightly"]
    for t in nightly.tasks:  # a failure shows at once, not after the retry delays
        t.retries = 0
    runs = [nightly.test(logical_date=None) for _ in range(2)]
    assert [r.state for r in runs] == ["success", "success"]
    assert all(r.logical_date is None for r in runs)
    with create_session() as session:
        children = {r.run_id: r.conf["client_id"] for r in session.query(DagRun).filter(
            DagRun.dag_id == "npimage_dedup",
            DagRun.run_id.in_([f"nightly__{n.run_id}__{i}" for n in runs for i in (0, 1)]))}
    assert len(children) == 4, children
    assert sorted(children.values()) == ["east", "east", "west", "west"]


def test_dedup_dag_uses_pools_not_fixed_caps(dagbag):
    dag = dagbag.dags["npimage_dedup"]
    assert dag.task_dict["signatures"].pool == "npimage_signatures"
    assert dag.task_dict["compare"].pool == "npimage_compare"
    assert all(t.max_active_tis_per_dag is None for t in dag.tasks)
    import json

    pools = json.loads((ROOT / "include" / "pools.json").read_text())
    assert {"npimage_signatures", "npimage_compare"} <= set(pools)


def test_dag_run_on_an_s3_data_dir(airflow_db, small_demo, s3_bucket, pg_dsn):
    """The DAG with NPIMAGE_DATA_DIR=s3://… (moto) and its source on S3: every task reads
    the previous task's files from the store, the client lock lives in PostgreSQL and the
    teardown releases it, the report is uploaded beside the run files."""
    from airflow.dag_processing.dagbag import DagBag

    from npimage.storage import locks
    from npimage.storage.layout import Layout
    from npimage.storage.store import location, upload_tree

    data = f"{s3_bucket}/data"
    upload_tree(small_demo.manifest.parent, location(f"{s3_bucket}/catalogue"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPIMAGE_DATA_DIR", data)
        mp.setenv("NPIMAGE_STATE_DSN", pg_dsn)
        dag = DagBag(dag_folder=str(ROOT / "dags")).dags["npimage_dedup"]
        run = dag.test(run_conf={"client_id": "s3client", "fv": False,
                                 "source": f"{s3_bucket}/catalogue/manifest.csv"})
        assert run.state == "success"
        result = check_published_run(data, "s3client", small_demo.truth)
        assert result["missed"] == 0, result["missed_rows"]
        layout = Layout.of(data)
        assert locks.read_holder(layout.client_dir("s3client")) is None
        assert (layout.report_dir("s3client") / "index.html").exists()


def test_a_dag_run_records_its_real_start(dag_runs):
    """Was: a DAG run's runs.started_at was its publish time (publish got no start)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    data, first, _, _ = dag_runs
    with create_session() as session:
        ends = dict(session.query(TaskInstance.task_id, TaskInstance.end_date).filter(
            TaskInstance.dag_id == "npimage_dedup", TaskInstance.run_id == first.run_id,
            TaskInstance.task_id.in_(["extract", "publish"])).all())
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    started = con.execute("SELECT started_at FROM runs WHERE run_id = $r",
                          {"r": first.run_id}).fetchone()[0]
    con.close()
    assert first.start_date <= started <= ends["extract"] < ends["publish"]
