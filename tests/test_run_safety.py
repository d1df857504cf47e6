"""Runs that must not publish, secrets that must not be stored, and the backend's view of
a run (issue #13): the CLI in a real subprocess and the real DAG with dag.test(), against
a real PostgreSQL.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import psycopg2.extensions
import pytest
from conftest import ROOT
from helpers import table_rows
from pg import pg_connect

import npimage

NPIMAGE = str(Path(sys.executable).with_name("npimage"))
SECRET = "Sw0rdfish-9f3c"


def _url(dsn: str, password: str | None = None) -> str:
    p = psycopg2.extensions.parse_dsn(dsn)
    auth = p.get("user", "postgres") + (f":{password}" if password else "")
    return f"postgresql://{auth}@{p['host']}:{p.get('port', 5432)}/{p['dbname']}"


def _env(**extra: str) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(Path(npimage.__file__).parents[1]), **extra}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([NPIMAGE, "-v", "run", "--no-fv", "--no-report", "--workers", "1",
                           *args], env=env or _env(), capture_output=True, text=True,
                          timeout=300)


def _runs(dsn: str, client: str) -> list[dict]:
    with closing(pg_connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, status, error, started_at, finished_at FROM npimage_run "
                    "WHERE client_id = %s ORDER BY started_at", (client,))
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def _backend_matches(dsn: str, client: str) -> int:
    with closing(pg_connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM npimage_image_match WHERE client_id = %s", (client,))
        return cur.fetchone()[0]


def _images(small_demo, folder: Path, limit: int | None = None) -> Path:
    folder.mkdir(parents=True)
    for p in sorted((small_demo.manifest.parent / "images").iterdir())[:limit]:
        shutil.copy2(p, folder / p.name)
    return folder


def _current(data: Path, client: str) -> str:
    return json.loads((data / "clients" / client / "current.json").read_text())["run_id"]


# -- an empty or unreadable source never replaces published matches ------------------------

def test_empty_or_unmounted_source_is_refused_and_nothing_is_lost(pg_backend, small_demo,
                                                                 tmp_path):
    folder = _images(small_demo, tmp_path / "images")
    data, url = tmp_path / "data", _url(pg_backend)
    base = ("--client", "z", "--data-dir", str(data), "--backend", url)
    assert _cli("--source", str(folder), *base).returncode == 0
    published, matches = _current(data, "z"), _backend_matches(pg_backend, "z")
    pairs = table_rows(data / "warehouse.duckdb", "image_matches", "z")
    assert matches > 0

    empty = tmp_path / "empty"
    empty.mkdir()
    unmounted = tmp_path / "unmounted.csv"  # a share that is not mounted: every file missing
    unmounted.write_text("image_id,product_id,uri\n" + "".join(
        f"{p.stem},{p.stem},/mnt/not-mounted/{p.name}\n" for p in sorted(folder.iterdir())))
    for source in (empty, unmounted):
        done = _cli("--source", str(source), *base)
        assert done.returncode == 2, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("npimage: error: client 'z': no usable image in the source")
        assert "Traceback" not in done.stderr
        assert _current(data, "z") == published
        assert _backend_matches(pg_backend, "z") == matches
        assert table_rows(data / "warehouse.duckdb", "image_matches", "z") == pairs
        assert _runs(pg_backend, "z")[-1]["status"] == "failed"
        assert "no usable image" in _runs(pg_backend, "z")[-1]["error"]

    # most images gone: refused above --max-shrink, accepted under a higher one
    for p in sorted(folder.iterdir())[: int(len(list(folder.iterdir())) * 0.6)]:
        p.unlink()
    done = _cli("--source", str(folder), *base)
    assert done.returncode == 2 and "more than max_shrink 50%" in done.stderr
    assert _backend_matches(pg_backend, "z") == matches
    assert _cli("--source", str(folder), *base, "--max-shrink", "0.7").returncode == 0
    assert _current(data, "z") != published

    # the user says so: an empty catalogue is published
    done = _cli("--source", str(empty), *base, "--allow-shrink")
    assert done.returncode == 0, done.stderr
    assert _backend_matches(pg_backend, "z") == 0


# -- no secret in any file, XCom value or log line ---------------------------------------

def _files_with(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_cli_keeps_no_password_in_files_or_logs(pg_backend, small_demo, tmp_path):
    data = tmp_path / "data"
    folder = _images(small_demo, tmp_path / "images", limit=20)
    secret_url = _url(pg_backend, SECRET)  # trust authentication: any password is accepted
    from npimage import backend
    from npimage.ingest.extract import extract_catalog

    res = extract_catalog("src", folder, tmp_path / "cat.parquet", tmp_path / "rej.parquet")
    backend.seed_source(pg_backend, res.catalog)
    runs = [_cli("--client", "tgt", "--source", str(folder), "--backend", secret_url,
                 "--data-dir", str(data)),
            _cli("--client", "src", "--source", secret_url, "--data-dir", str(data)),
            _cli("--client", "src", "--source", secret_url, "--data-dir", str(data),
                 "--mode", "incremental"),
            _cli("--client", "env", "--source", str(folder), "--backend", "env:NP_TEST_DSN",
                 "--data-dir", str(data), env=_env(NP_TEST_DSN=secret_url)),
            # a failing run: its error and traceback must not carry the password either
            _cli("--client", "bad", "--source", str(folder), "--backend",
                 secret_url.rsplit("/", 1)[0] + "/no_such_db", "--data-dir", str(data))]
    assert [r.returncode for r in runs[:4]] == [0, 0, 0, 0], [r.stderr for r in runs]
    assert runs[4].returncode != 0
    assert _backend_matches(pg_backend, "tgt") > 0 and _backend_matches(pg_backend, "env") > 0
    for r in runs:
        assert SECRET not in r.stdout + r.stderr
    assert _files_with(data, SECRET) == []
    contexts = list(data.rglob("context.json"))
    assert len(contexts) >= 4
    assert any("postgres:***@" in p.read_text() for p in contexts)


def _xcom_values(run_id: str) -> list[str]:
    import os

    db = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    with closing(sqlite3.connect(db)) as con:
        return [str(v) for (v,) in con.execute("SELECT value FROM xcom WHERE run_id = ?",
                                                (run_id,))]


# -- run status in the backend -------------------------------------------------------------

@pytest.fixture
def silent_server():
    """A TCP server that accepts and never answers: an FTP read that hangs until timeout."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield srv.getsockname()[1]


def test_cli_run_is_running_from_the_start_with_its_real_start_time(
        pg_backend, small_demo, tmp_path, silent_server):
    folder = _images(small_demo, tmp_path / "images", limit=20)
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,product_id,uri\n" + "".join(
        f"{p.stem},{p.stem},{p}\n" for p in sorted(folder.iterdir()))
        + f"hang,hang,ftp://127.0.0.1:{silent_server}/hang.jpg\n")
    t0 = time.time()
    proc = subprocess.Popen([NPIMAGE, "run", "--no-fv", "--no-report", "--workers", "1",
                             "--client", "s", "--source", str(manifest), "--backend",
                             _url(pg_backend), "--data-dir", str(tmp_path / "data")],
                            env=_env(NPIMAGE_READ_TIMEOUT="6"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    while proc.poll() is None and not seen:
        seen = [r for r in _runs(pg_backend, "s") if r["status"] == "running"]
        time.sleep(0.1)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert seen, "no 'running' row while the run was in flight"
    final = _runs(pg_backend, "s")
    assert [r["status"] for r in final] == ["success"]
    assert final[0]["started_at"] == seen[0]["started_at"]
    assert final[0]["started_at"].timestamp() < t0 + 30
    assert final[0]["finished_at"] - final[0]["started_at"] > timedelta(seconds=5)


def test_cli_failure_after_extract_is_a_failed_row(pg_backend, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _cli("--client", "f", "--source", str(empty), "--backend", _url(pg_backend),
                "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2
    (row,) = _runs(pg_backend, "f")
    assert row["status"] == "failed" and "no usable image" in row["error"]


def test_dag_run_status_and_no_password_in_files_xcom_or_logs(
        pg_backend, small_demo, airflow_db, tmp_path, monkeypatch, capfd, caplog):
    """dag.test() with a backend URL carrying a password: the run's npimage_run row has its
    real start; no XCom value, run file or log line holds the password; a run that fails
    before the load (an empty source) is a 'failed' row with the error."""
    from airflow.dag_processing.dagbag import DagBag

    folder = _images(small_demo, tmp_path / "images", limit=20)
    monkeypatch.setenv("NPIMAGE_DATA_DIR", str(tmp_path / "data"))
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["npimage_dedup"]
    conf = {"client_id": "dags", "source": str(folder), "fv": False,
            "backend": _url(pg_backend, SECRET)}
    run = dag.test(run_conf=conf)
    assert run.state == "success"
    (row,) = _runs(pg_backend, "dags")
    assert row["status"] == "success" and row["run_id"] == run.run_id
    assert abs(row["started_at"] - run.start_date) < timedelta(seconds=1)
    assert _backend_matches(pg_backend, "dags") > 0

    xcoms = _xcom_values(run.run_id)
    assert xcoms and not [v for v in xcoms if SECRET in v]
    assert any("postgres:***@" in v for v in xcoms)
    out, err = capfd.readouterr()
    assert SECRET not in out + err + caplog.text
    assert _files_with(tmp_path / "data", SECRET) == []

    empty = tmp_path / "empty"
    empty.mkdir()
    failed = dag.test(run_conf={**conf, "source": str(empty)})
    assert failed.state == "failed"
    row = _runs(pg_backend, "dags")[-1]
    assert row["run_id"] == failed.run_id and row["status"] == "failed"
    assert "task consolidate failed" in row["error"] and "no usable image" in row["error"]
    assert abs(row["started_at"] - failed.start_date) < timedelta(seconds=1)
    assert _backend_matches(pg_backend, "dags") > 0  # the published matches stay
    assert SECRET not in row["error"]


def test_a_killed_runs_running_row_is_marked_failed_by_the_next_run(pg_backend, small_demo,
                                                                    tmp_path):
    """A run killed with SIGKILL cannot record its end: the next run of the client, which
    holds the client's lock, marks that row failed (abandoned)."""
    from npimage import backend

    backend.record_run_start(pg_backend, "k", "cli__killed", {"mode": "full"})
    folder = _images(small_demo, tmp_path / "images", limit=10)
    done = _cli("--client", "k", "--source", str(folder), "--backend", _url(pg_backend),
                "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    rows = {r["run_id"]: r for r in _runs(pg_backend, "k")}
    assert rows["cli__killed"]["status"] == "failed"
    assert rows["cli__killed"]["error"].startswith("abandoned:")
    assert [r["status"] for r in rows.values() if r["run_id"] != "cli__killed"] == ["success"]
