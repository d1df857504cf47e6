"""The command line speaks clearly: real `npimage` processes, their exit codes and output.

Every problem a user can fix is one line on stderr (what went wrong, what to do) and a
non-zero exit, never a traceback; the run summary says what was computed, reused,
stored and loaded.
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2.extensions
import pytest
from helpers import run_cli
from pg import pg_connect

import npimage
from npimage.launch import command

COMMANDS = ("run", "demo", "evaluate", "fit-weights", "report", "nearest")


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The last line of stderr (log lines may come before it); no traceback anywhere."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    return lines[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _url(dsn: str) -> str:
    p = psycopg2.extensions.parse_dsn(dsn)
    return f"postgresql://{p.get('user', 'postgres')}@{p['host']}:{p.get('port', 5432)}/" \
           f"{p['dbname']}"


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"npimage {npimage.__version__}"


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "--client", "c"], "run"), (["-v", "run"], "run"), (["--verbose", "report"], "report"),
    (["run", "--help"], None), (["-h"], None), ([], None)])
def test_the_entry_point_knows_a_run_before_it_loads_the_cli(argv, expected):
    assert command(argv) == expected


def test_a_mistyped_command_or_flag_gets_a_suggestion():
    proc = run_cli("rn", "--client", "x")
    assert proc.returncode == 2
    assert "invalid choice: 'rn'" in _error_line(proc) and "did you mean run?" in proc.stderr
    assert proc.stderr.count("\n") == 1
    proc = run_cli("run", "--client", "x", "--source", "y", "--treshold", "0.5")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "unrecognized arguments: --treshold" in proc.stderr
    assert "did you mean --threshold?" in proc.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_client(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--client CLIENT client id: partitions every table" in text


@pytest.fixture(scope="module")
def published(small_demo, tmp_path_factory):
    """One real `npimage run` of the small demo catalogue (hashes only, no report)."""
    data = tmp_path_factory.mktemp("cli")
    proc = run_cli("run", "--client", "acme", "--source", str(small_demo.manifest),
                   "--data-dir", str(data), "--no-fv", "--no-report", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    return data, proc.stdout


def test_the_summary_says_what_was_computed_reused_and_how_pairs_are_counted(published,
                                                                             small_demo):
    data, out = published
    assert f"signatures        {small_demo.n_images} computed, 0 reused" in out
    assert "pairs are counted once; the tables hold both directions" in out
    proc = run_cli("run", "--client", "acme", "--source", str(small_demo.manifest),
                   "--data-dir", str(data), "--no-fv", "--no-report", "--workers", "1",
                   "--mode", "incremental")
    assert proc.returncode == 0, proc.stderr
    assert "signatures        0 computed, 0 reused" in proc.stdout


def test_the_summary_says_how_many_rows_were_loaded_into_postgresql(published, small_demo,
                                                                    pg_backend):
    data, _ = published
    proc = run_cli("run", "--client", "pgc", "--source", str(small_demo.manifest),
                   "--data-dir", str(data), "--no-fv", "--no-report", "--workers", "1",
                   "--backend", _url(pg_backend))
    assert proc.returncode == 0, proc.stderr
    with pg_connect(pg_backend) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM npimage_image_match WHERE client_id = 'pgc'")
        images = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM npimage_product_match WHERE client_id = 'pgc'")
        products = cur.fetchone()[0]
    assert images > 0
    p = psycopg2.extensions.parse_dsn(pg_backend)
    assert (f"postgresql        {images} image-match and {products} product-match rows "
            f"loaded into {p['host']}:{p.get('port', 5432)}/{p['dbname']}") in proc.stdout


def test_report_of_an_unknown_client_is_one_line(published):
    data, _ = published
    proc = run_cli("report", "--client", "nosuch", "--data-dir", str(data))
    assert proc.returncode == 2
    assert _error_line(proc) == (
        "npimage: error: no images of client 'nosuch' in the warehouse (check --client and "
        "--data-dir, or run `npimage run --client ...` first)")
    assert proc.stderr.count("\n") == 1


def test_an_unreachable_postgresql_is_refused_before_any_image_is_computed(small_demo,
                                                                           tmp_path):
    port = _free_port()  # nothing listens there
    proc = run_cli("run", "--client", "acme", "--source", str(small_demo.manifest),
                   "--data-dir", str(tmp_path), "--no-fv", "--backend",
                   f"postgresql://npimage:secret@127.0.0.1:{port}/nextpage")
    assert proc.returncode == 4
    line = _error_line(proc)
    assert line.startswith(f"npimage: error: cannot reach PostgreSQL at 127.0.0.1:{port}/nextpage")
    assert "secret" not in proc.stderr
    assert not (tmp_path / "clients").exists()  # no run folder, nothing computed


def _without_root_override() -> tuple[str, ...]:
    """A command prefix under which file permissions bind (root's override dropped)."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner")


def test_a_read_only_data_dir_is_one_line(small_demo):
    base = Path(tempfile.mkdtemp(prefix="npimage-ro-"))
    try:
        data = base / "data"
        data.mkdir()
        data.chmod(0o555)
        src = small_demo.manifest
        proc = run_cli("run", "--client", "acme", "--source", str(src), "--data-dir",
                       str(data), "--no-fv", prefix=_without_root_override())
        assert proc.returncode == 2, proc.stderr
        assert _error_line(proc) == (
            f"npimage: error: data dir {data} is not writable: Permission denied (pass "
            "--data-dir a writable folder (or set NPIMAGE_DATA_DIR))")
        assert list(data.iterdir()) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


class _SlowImages(http.server.BaseHTTPRequestHandler):
    """Answers nothing for a minute: signature reads wait on it."""

    def do_GET(self):
        time.sleep(60)

    def log_message(self, *args):
        pass


def test_ctrl_c_stops_the_run_with_one_line_and_exit_130(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowImages)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        manifest = tmp_path / "manifest.csv"
        port = server.server_address[1]
        manifest.write_text("image_id,product_id,uri\n" + "".join(
            f"i{k},p{k},http://127.0.0.1:{port}/{k}.jpg\n" for k in range(4)))
        plugins = str(Path(__file__).resolve().parents[1] / "plugins")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (plugins, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "npimage.cli", "run", "--client", "c", "--source",
             str(manifest), "--data-dir", str(tmp_path / "data"), "--no-fv",
             "--workers", "2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        seen = ""
        while "plan:" not in seen:  # the signatures stage starts: reads are waiting
            line = proc.stderr.readline()
            assert line, f"the run ended early: {seen}"
            seen += line
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        _, err = proc.communicate(timeout=60)
    finally:
        server.shutdown()
    assert proc.returncode == 130
    err = seen + err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("npimage: interrupted (Ctrl-C)")
    assert not (tmp_path / "data" / "clients" / "c" / "current.json").exists()


def test_the_demo_without_its_extra_says_how_to_install_it(tmp_path):
    hidden = tmp_path / "hide"
    (hidden / "skimage").mkdir(parents=True)
    (hidden / "skimage" / "__init__.py").write_text(
        "raise ImportError('No module named skimage')\n")
    proc = run_cli("demo", "--data-dir", str(tmp_path / "data"), "--no-fv",
                   env={"PYTHONPATH": str(hidden)})
    assert proc.returncode == 2
    assert _error_line(proc) == (
        "npimage: error: the demo catalogue needs scikit-image, which is not installed "
        "(install the demo extra: pip install 'npimage[demo]')")
    assert not (tmp_path / "data" / "demo_catalogue").exists()


def test_an_empty_source_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("run", "--client", "e", "--source", str(empty), "--data-dir",
                   str(tmp_path / "data"), "--no-fv", "--no-report")
    assert proc.returncode == 2
    last = _error_line(proc)
    assert last.startswith("npimage: error: ") and ("empty" in last or "no image" in last)


def test_a_run_without_terminal_logs_each_stage_s_progress_fed_by_the_workers(small_demo,
                                                                            tmp_path):
    """No TTY (a log, Airflow): a line every few seconds per stage, counted per image in
    the workers; --timings adds the wall time of each stage."""
    import re

    proc = run_cli("run", "--client", "acme", "--source", str(small_demo.manifest),
                   "--data-dir", str(tmp_path), "--no-fv", "--no-report", "--read", "none",
                   "--workers", "2", "--timings",
                   env={"NPIMAGE_PROGRESS_EVERY": "0.05", "NPIMAGE_BATCH_SIZE": "8"})
    assert proc.returncode == 0, proc.stderr
    n = small_demo.n_images
    counts = [int(m.group(1)) for m in re.finditer(
        rf"INFO signatures: (\d+)/{n} img \(\d+%\), \d+ img/s", proc.stderr)]
    assert any(0 < c < n for c in counts), proc.stderr  # counted mid-stage, not per stage
    assert counts == sorted(counts)
    assert re.search(rf"INFO signatures: {n} img in [\d.]+s \(\d+ img/s\)", proc.stderr)
    assert re.search(r"INFO compare: \d+ pairs in", proc.stderr)
    assert "Traceback" not in proc.stderr
    table = proc.stdout.split("stage             seconds")[1]
    stages = re.findall(r"^  (\w+) +([\d.]+)$", table, re.M)
    names = [s for s, _ in stages]
    assert names[:3] == ["extract", "plan", "signatures"] and names[-1] == "total"
    assert abs(sum(float(v) for _, v in stages[:-1]) - float(stages[-1][1])) < 0.05
