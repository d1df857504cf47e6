"""The storage layer: layout, object store, warehouse shared by readers and publishers,
schema migrations, shared locks. Real parts: Parquet, DuckDB, PostgreSQL, a moto S3 server.

The `data_dir` fixture runs a test once with a local folder and once with s3://.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import psycopg2
import pytest
from storage_helpers import MIX_QUERY, publish_run, run_files, run_record

from npimage.config import Settings
from npimage.sqlfiles import schema_version
from npimage.storage import locks, warehouse
from npimage.storage.layout import Layout, safe_name
from npimage.storage.store import is_remote, location, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "release_3b8234e"


# -- layout and object store -------------------------------------------------------------

def test_client_names_never_share_a_folder():
    """Issue #13: `a/b` and `a_b-c14cddc033` shared one folder (lock, report, baseline)."""
    layout = Layout.of("/d")
    assert safe_name("a/b") == "a_b-c14cddc033"
    assert layout.client_dir("a/b") != layout.client_dir("a_b-c14cddc033")
    assert layout.report_dir("a/b") != layout.report_dir("a_b-c14cddc033")
    ids = ["a/b", "a_b-c14cddc033", "a_b", "a b", "a:b", "A_B", "x" * 41, "x" * 40, ".", "-"]
    assert len({safe_name(i) for i in ids}) == len(ids)
    assert safe_name("acme") == "acme"  # plain names keep their folders across versions


def test_s3_data_dir_stays_a_url(monkeypatch: pytest.MonkeyPatch):
    """Issue #14: NPIMAGE_DATA_DIR=s3://bucket/x became the local folder `s3:/bucket/x`."""
    monkeypatch.setenv("NPIMAGE_DATA_DIR", "s3://bucket/npimage")
    settings = Settings()
    assert str(settings.data_dir) == "s3://bucket/npimage"
    assert str(Settings().with_overrides(data_dir="s3://b2/y").data_dir) == "s3://b2/y"
    assert is_remote(location("s3://bucket/x")) and not is_remote(location("data"))
    assert str(Layout.of("s3://bucket/x").pointer("acme")) == \
        "s3://bucket/x/clients/acme/current.json"


def test_store_round_trip_on_s3(s3_bucket: str):
    path = location(f"{s3_bucket}/d/clients/acme/current.json")
    write_text_atomic(path, '{"run_id": "r1"}')
    assert json.loads(path.read_text()) == {"run_id": "r1"}
    write_text_atomic(path, '{"run_id": "r2"}')
    assert json.loads(location(str(path)).read_text())["run_id"] == "r2"


# -- the warehouse -----------------------------------------------------------------------

def test_publish_and_query(data_dir: str):
    publish_run(data_dir, "acme", "r1", 4)
    publish_run(data_dir, "beta", "r1", 2)
    publish_run(data_dir, "acme", "r2", 3)
    con = warehouse.connect(data_dir)
    rows = con.execute(MIX_QUERY).fetchall()
    assert rows == [("acme", 1, "r2", 3 * 3 + 2), ("beta", 1, "r1", 3 * 2 + 2)]
    runs = con.execute("SELECT client_id, run_id FROM runs ORDER BY ALL").fetchall()
    assert runs == [("acme", "r1"), ("acme", "r2"), ("beta", "r1")]
    summary = con.execute("SELECT client_id, run_id, images FROM client_summary "
                          "ORDER BY 1").fetchall()
    assert summary == [("acme", "r2", 3), ("beta", "r1", 2)]
    assert con.execute("SELECT version FROM npimage_schema").fetchone()[0] == \
        schema_version("duckdb")


def test_open_reader_never_makes_a_publish_fail(tmp_path: Path):
    """Issue #13: a read-only connection on warehouse.duckdb made the next publish fail
    (`IOException: Could not set lock on file`)."""
    data = str(tmp_path)
    publish_run(data, "acme", "r1", 4)
    reader = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    held = warehouse.connect(data)
    publish_run(data, "z", "r1", 2)  # must not raise
    publish_run(data, "acme", "r2", 3)
    assert reader.execute(MIX_QUERY).fetchall() == [("acme", 1, "r1", 14)]  # its snapshot
    assert held.execute(MIX_QUERY).fetchall() == [("acme", 1, "r1", 14)]
    script = ("import duckdb,sys; print(duckdb.connect(sys.argv[1], read_only=True)"
              ".execute(\"SELECT count(*) FROM images WHERE client_id = 'acme'\").fetchone()[0])")
    fresh = subprocess.run([sys.executable, "-c", script, str(tmp_path / "warehouse.duckdb")],
                           capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == "3"  # a new reader of the file sees the new run


def _publish_rounds(data_dir: str, client: str, rounds: int, errors: list,
                    first: int = 0) -> None:
    for r in range(first, rounds):
        try:
            publish_run(data_dir, client, f"r{r:02d}", 2 + (r % 5))
        except Exception as exc:  # collected: the test asserts there are none
            errors.append((client, r, repr(exc)))


def test_parallel_publishes_and_a_reader_never_see_a_mix(data_dir: str):
    """Issue #13: two clients publishing at once failed 4 times in 5. Here 2 clients x 20
    rounds in parallel threads, with a reader querying all the while: no publish fails,
    and every snapshot holds exactly one run per client with that run's row counts."""
    rounds, errors, seen = 20, [], []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            con = warehouse.connect(data_dir)
            try:
                seen.append(con.execute(MIX_QUERY).fetchall())
            finally:
                con.close()

    for c in ("acme", "beta"):
        publish_run(data_dir, c, "r00", 2)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(_publish_rounds, data_dir, c, rounds, errors, 1)
                      for c in ("acme", "beta")]:
                f.result()
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert seen, "the reader never got a snapshot"
    for snapshot in seen:
        for _client, runs, run, n in snapshot:
            assert runs == 1, snapshot
            assert n == 3 * (2 + int(run[1:]) % 5) + 2, snapshot
    final = warehouse.connect(data_dir).execute(MIX_QUERY).fetchall()
    assert [(c, r) for c, _, r, _ in final] == [("acme", "r19"), ("beta", "r19")]


def _publish_in_process(data_dir: str, client: str, rounds: int, queue) -> None:
    errors: list = []
    _publish_rounds(data_dir, client, rounds, errors)
    queue.put(errors)


def test_two_processes_publish_at_the_same_moment_20_times(tmp_path: Path):
    """Separate processes (as on separate hosts), each publishing its client 20 times."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_publish_in_process, args=(str(tmp_path), c, 20, queue))
             for c in ("acme", "beta")]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    assert results == [[], []]
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    assert [r[:3] for r in con.execute(MIX_QUERY).fetchall()] == [("acme", 1, "r19"),
                                                                  ("beta", 1, "r19")]


def test_failed_commit_keeps_the_previous_run_and_leaves_no_temporary_file(tmp_path: Path):
    data = str(tmp_path)
    publish_run(data, "acme", "r1", 4)

    def backend_fails(commit):
        commit()
        raise RuntimeError("backend commit failed")

    with pytest.raises(RuntimeError, match="backend commit failed"):
        publish_run(data, "acme", "r2", 3, around_commit=backend_fails)
    assert Layout.of(data).read_pointer("acme")["run_id"] == "r1"  # put back
    assert warehouse.connect(data).execute(MIX_QUERY).fetchall()[0][2] == "r1"
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 4 MiB tmpfs (needs root; skipped otherwise), unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    """Fill the file system of `folder` until it is full."""
    with (folder / "filler").open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


def test_disk_full_right_after_the_commit_keeps_the_run_published(tiny_disk: Path):
    """Issue #13: disk full right after the warehouse commit gave exit 1 although the run
    was published, `current.json` naming the old run, and `.tmp` files left behind."""
    data = str(tiny_disk)
    publish_run(data, "acme", "r1", 4)

    def commit_then_disk_full(commit):  # the backend commits, then the disk is full
        commit()
        _fill(tiny_disk)

    pointer = publish_run(data, "acme", "r2", 3, around_commit=commit_then_disk_full)
    assert pointer["run_id"] == "r2"
    assert Layout.of(data).read_pointer("acme")["run_id"] == "r2"
    assert not [p for p in tiny_disk.rglob("*") if p.name.endswith((".tmp", ".tmp.wal"))]
    (tiny_disk / "filler").unlink()
    assert warehouse.connect(data).execute(MIX_QUERY).fetchall()[0][2] == "r2"


def test_disk_full_at_the_commit_fails_cleanly(tiny_disk: Path):
    """The pointer itself cannot be written: the publish fails, the old run stays."""
    data = str(tiny_disk)
    publish_run(data, "acme", "r1", 4)
    files = run_files(data, "acme", "r2", 3)
    _fill(tiny_disk)
    with pytest.raises(OSError):
        warehouse.publish(data, "acme", "r2", files, run_record("acme", "r2", 3))
    assert Layout.of(data).read_pointer("acme")["run_id"] == "r1"
    assert not [p for p in tiny_disk.rglob("*") if p.name.endswith(".tmp")]


# -- schema versions ---------------------------------------------------------------------

def _release_warehouse(root: Path) -> None:
    """A warehouse.duckdb as the release of commit 3b8234e made it (SQL saved as fixture),
    with two clients published, and their current.json."""
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    con.execute((FIXTURES / "duckdb_tables.sql").read_text())
    replace = (FIXTURES / "duckdb_replace_client.sql").read_text()
    from npimage.sqlfiles import run_script

    for client, n in (("acme", 4), ("a/b", 2)):
        files = {table: [_as_release(con, table, p) for p in paths]
                 for table, paths in run_files(str(root), client, "old1", n).items()}
        params = {"client_id": client, "run_id": "old1",
                  **{k: [str(p) for p in v] for k, v in files.items()}}
        params["catalog"] = params.pop("images")
        run_script(con, replace, params)
        rec = run_record(client, "old1", n)
        con.execute("INSERT INTO runs VALUES ($client_id, $run_id, $mode, $fv_model, $top_k, "
                    "$threshold, $weights, $n_images, $n_rejects, $n_computed, "
                    "$n_image_matches, $n_product_matches, $started_at, now())", rec)
        write_text_atomic(Layout.of(str(root)).pointer(client), '{"run_id": "old1"}')
    con.close()


def _as_release(con: duckdb.DuckDBPyConnection, table: str, path: Path) -> Path:
    """A copy of a run file with only the columns the release's `table` had."""
    import pyarrow.parquet as pq

    names = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                       "WHERE table_name = ?", [table]).fetchall()}
    data = pq.read_table(path)
    out = Path(path).with_suffix(".release.parquet")
    pq.write_table(data.select([c for c in data.column_names if c in names]), out)
    return out


def _all_rows(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    """Every row of every table, without run ids (runs: client, run, images)."""
    query = "SELECT COLUMNS(lambda c: c <> 'run_id') FROM {} ORDER BY ALL"
    out = {t: con.execute(query.format(t)).fetchall() for t in warehouse.TABLES}
    out["runs"] = con.execute("SELECT client_id, run_id, n_images FROM runs ORDER BY ALL"
                              ).fetchall()
    return out


def test_warehouse_of_the_release_is_migrated_in_place_without_losing_rows(tmp_path: Path):
    _release_warehouse(tmp_path)
    before = _all_rows(duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True))
    assert sum(map(len, before.values())) > 20
    publish_run(str(tmp_path), "z", "new1", 2)  # a newer npimage publishes: migrates first
    con = warehouse.connect(str(tmp_path))
    after = _all_rows(con)
    for table, rows in before.items():
        z = [r for r in after[table] if r[0] == "z"]
        width = len(rows[0])  # columns added by later migrations read as NULL
        assert [r[:width] for r in after[table] if r[0] != "z"] == rows, table
        assert all(v is None for r in after[table] if r[0] != "z" for v in r[width:]), table
        assert z, table
    assert (tmp_path / "warehouse.v1.duckdb").exists()
    assert con.execute("SELECT version FROM npimage_schema").fetchone()[0] == \
        schema_version("duckdb")
    file_con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    assert _all_rows(file_con) == after  # SQL users of the file see the same
    publish_run(str(tmp_path), "acme", "new2", 3)  # the migrated client publishes again
    runs = warehouse.connect(str(tmp_path)).execute(
        "SELECT run_id FROM runs WHERE client_id = 'acme' ORDER BY 1").fetchall()
    assert runs == [("new2",), ("old1",)]


def test_a_new_column_reads_as_null_from_older_files(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """Adding a column is one migration file; files published before it read with NULL."""
    publish_run(str(tmp_path), "acme", "r1", 3)
    sql = tmp_path / "sql"
    import shutil

    from npimage import sqlfiles
    shutil.copytree(sqlfiles.sql_dir(), sql)
    (sql / "duckdb" / "migrations" / "0099_verified.sql").write_text(
        "ALTER TABLE image_matches ADD COLUMN reviewed_twice BOOLEAN;\n"
        "CREATE TABLE image_notes (client_id VARCHAR NOT NULL, image_id VARCHAR, code VARCHAR);")
    monkeypatch.setenv("NPIMAGE_SQL_DIR", str(sql))
    for f in (sqlfiles.load_sql, warehouse.table_columns):
        f.cache_clear()
    try:
        con = warehouse.connect(str(tmp_path))
        assert con.execute("SELECT count(*), count(reviewed_twice) FROM image_matches").fetchone() \
            == (3, 0)
        assert con.execute("SELECT count(*) FROM image_notes").fetchone() == (0,)
        assert con.execute("SELECT version FROM npimage_schema").fetchone() == (99,)
    finally:
        monkeypatch.delenv("NPIMAGE_SQL_DIR")
        for f in (sqlfiles.load_sql, warehouse.table_columns):
            f.cache_clear()


def test_backend_tables_of_the_release_are_migrated_in_place(pg_dsn: str):
    """Tables created by the release's schema.sql (fixture), with rows: apply_schema of
    this npimage records the version and keeps every row; running it again does nothing."""
    from npimage.backend import apply_schema

    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS npimage_run, npimage_image_match, "
                    "npimage_product_match, npimage_band, npimage_schema_version")
        cur.execute((FIXTURES / "postgres_schema.sql").read_text())
        cur.execute("INSERT INTO npimage_run (client_id, run_id, status) "
                    "VALUES ('acme', 'old', 'success')")
        cur.execute("INSERT INTO npimage_image_match VALUES "
                    "('acme', 'a', 'b', 1, 0.99, 'same', 1, 1, 1, NULL, false, 'old')")
    assert apply_schema(pg_dsn) == schema_version("postgres")
    assert apply_schema(pg_dsn) == schema_version("postgres")
    with conn.cursor() as cur:
        cur.execute("SELECT max(version) FROM npimage_schema_version")
        assert cur.fetchone()[0] == schema_version("postgres")
        cur.execute("SELECT count(*) FROM npimage_run WHERE run_id = 'old'")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*) FROM npimage_image_match")
        assert cur.fetchone()[0] == 1
    conn.close()


# -- shared locks ------------------------------------------------------------------------

def test_object_store_locks_need_postgres(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NPIMAGE_STATE_DSN", raising=False)
    with pytest.raises(RuntimeError, match="NPIMAGE_STATE_DSN"):
        locks.acquire(location("s3://bucket/d/clients/acme"), "acme", "r1")


_HOLD = """
import sys, time
from npimage.storage import locks
lock = locks.acquire(sys.argv[1], "acme", sys.argv[2])
print("held", flush=True)
time.sleep(600)
"""


def test_shared_lock_across_processes_and_lease_of_a_dead_one(
        pg_dsn: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch):
    """A process on another host (here: another process) holds the lock in PostgreSQL; the
    lock is refused while its heartbeat runs, and taken over once its lease ran out after
    it was killed (no release)."""
    monkeypatch.setenv("NPIMAGE_STATE_DSN", pg_dsn)
    monkeypatch.setenv("NPIMAGE_LOCK_TTL", "2")
    client_dir = f"{s3_bucket}/d/clients/acme"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, client_dir, "run-1"], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        time.sleep(3)  # longer than the lease: only the heartbeat keeps it
        with pytest.raises(locks.RunInProgress, match=f"process {proc.pid} "):
            locks.acquire(location(client_dir), "acme", "run-2")
        assert not locks.release(location(client_dir), "run-2")
    finally:
        proc.kill()
        proc.wait()
    time.sleep(2.5)
    lock = locks.acquire(location(client_dir), "acme", "run-2")
    assert lock.took_over is not None and lock.took_over.run_id == "run-1"
    other = locks.acquire(location(f"{s3_bucket}/d/clients/beta"), "beta", "run-2")
    assert lock.release() and other.release()
    assert locks.read_holder(location(client_dir)) is None


def test_airflow_lock_is_shared_between_tasks_on_any_host(pg_dsn: str,
                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NPIMAGE_STATE_DSN", pg_dsn)
    client_dir = location("s3://bucket-x/d/clients/acme")
    locks.acquire(client_dir, "acme", "dag-1", owner=locks.AIRFLOW, dag_id="d")
    again = locks.acquire(client_dir, "acme", "dag-1", owner=locks.AIRFLOW, dag_id="d")
    assert again.took_over is None  # a retried extract task takes its own lock again
    with pytest.raises(locks.RunInProgress, match="Airflow DAG run of d"):
        locks.acquire(client_dir, "acme", "dag-2", owner=locks.AIRFLOW,
                      is_alive=lambda h: True)
    taken = locks.acquire(client_dir, "acme", "dag-2", owner=locks.AIRFLOW,
                          is_alive=lambda h: h.run_id != "dag-1")  # dag-1 is dead
    assert taken.took_over.run_id == "dag-1"
    assert not locks.release(client_dir, "dag-1")  # the dead run's teardown frees nothing
    assert locks.release(client_dir, "dag-2")
    locks.acquire(client_dir, "acme", "dag-3", owner=locks.AIRFLOW)
    assert locks.force_release(client_dir).run_id == "dag-3"


def test_runs_starting_at_the_same_instant_elect_exactly_one_shared(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NPIMAGE_STATE_DSN", pg_dsn)
    client_dir = location("s3://bucket-y/d/clients/acme")
    barrier = threading.Barrier(8)

    def attempt(i: int):
        barrier.wait()
        try:
            return locks.acquire(client_dir, "acme", f"run-{i}", owner=locks.AIRFLOW)
        except locks.RunInProgress:
            return None

    with ThreadPoolExecutor(8) as pool:
        won = [x for x in pool.map(attempt, range(8)) if x is not None]
    assert len(won) == 1
    assert locks.release(client_dir, won[0].holder.run_id)


def test_read_parts_with_no_ids_reads_nothing(tmp_path: Path):
    """Issue #13: every image changed (`touch`) -> no id kept from the baseline, and
    `isin([])` failed with `ArrowTypeError: string vs null` (parquet_io.read_parts)."""
    from storage_helpers import run_files

    from npimage.schemas import SIGNATURES
    from npimage.storage.parquet_io import read_parts

    files = run_files(str(tmp_path), "acme", "r1", 3)
    folder = files["signatures"][0].parent
    assert read_parts(folder, SIGNATURES, ids=[]).num_rows == 0
    assert read_parts(folder, SIGNATURES, ids=["r1/img001"]).num_rows == 1
