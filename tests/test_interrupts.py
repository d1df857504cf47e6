"""Interrupted runs (issue #13): Ctrl-C, kill -9, workers that outlive their parent, resume.

Real `npimage run` subprocesses with two worker processes, interrupted with real signals
while they compute signatures; the rerun of the same command must compute only the
batches that were not complete and publish the same tables as an undisturbed run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import table_rows
from PIL import Image

from npimage.config import Settings
from npimage.pipeline import settings_context
from npimage.runner import Workers, run_pipeline

NPIMAGE = str(Path(sys.executable).with_name("npimage"))
TABLES = ("images", "rejects", "image_matches", "product_matches")
N_IMAGES = 12
BATCH = 2


@pytest.fixture(scope="module")
def slow_folder(tmp_path_factory) -> Path:
    """12 large, smooth PNGs (2400 x 1800): each takes a while to decode, none is tiny.

    Pairs of near copies so that the run has matches to publish."""
    folder = tmp_path_factory.mktemp("slow") / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(N_IMAGES // 2):
        small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        big = Image.fromarray(small).resize((2400, 1800), Image.Resampling.BICUBIC)
        big.save(folder / f"p{i:02d}_PIECE_01.png", compress_level=1)
        big.point(lambda v: min(255, v + 6)).save(folder / f"p{i:02d}_PIECE_02.png",
                                                  compress_level=1)
    return folder


@pytest.fixture(scope="module")
def undisturbed(slow_folder, tmp_path_factory) -> dict[str, list]:
    """The tables of an uninterrupted run: what every resumed run must publish."""
    data = tmp_path_factory.mktemp("undisturbed")
    settings = Settings().with_overrides(data_dir=data, fv=False)
    run_pipeline(settings_context("c", str(slow_folder), "clean", settings), workers=1,
                 report=False)
    return _tables(data)


def _tables(data: Path) -> dict[str, list]:
    wh = data / "warehouse.duckdb"
    out = {t: table_rows(wh, t, "c") for t in TABLES}
    out["signatures"] = table_rows(wh, "signatures", "c", ("run_id", "computed_at"))
    return out


def _cmd(folder: Path, data: Path) -> list[str]:
    return [NPIMAGE, "run", "--client", "c", "--source", str(folder), "--data-dir", str(data),
            "--no-fv", "--no-report", "--workers", "2"]


def _env() -> dict[str, str]:
    import npimage

    return {**os.environ, "NPIMAGE_BATCH_SIZE": str(BATCH),
            "PYTHONPATH": str(Path(npimage.__file__).parents[1])}


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (read from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _workers(pid: int) -> list[int]:
    """The worker processes of run `pid`: the children of its forkserver, a child of it."""
    return [w for child in _children(pid) for w in _children(child)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _all_gone(pids: list[int], timeout: float = 10.0) -> bool:
    """Whether every process of `pids` has exited within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


def _done_rows(data: Path) -> int:
    """Images in the signature batches complete on disk (their sig_counts markers)."""
    import json

    markers = [json.loads(p.read_text()) for p in (data / "clients").rglob("sig_counts/*.json")]
    return sum(m[k] for m in markers for k in ("computed", "reused", "rejected", "resumed"))


def _start_until_first_batch(folder: Path, data: Path) -> subprocess.Popen[str]:
    """`npimage run` started on `folder`, returned once a first signature batch is complete."""
    proc = subprocess.Popen(_cmd(folder, data), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _done_rows(data) == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no batch completed in 120 s"
        time.sleep(0.02)
    return proc


def _interrupt_mid_signatures(folder: Path, data: Path, sig: int
                              ) -> tuple[subprocess.CompletedProcess, list[int]]:
    """Start a run, send `sig` once a first batch is complete; its result and workers."""
    proc = _start_until_first_batch(folder, data)
    workers = _workers(proc.pid) + _children(proc.pid)  # + the forkserver
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), workers


def _rerun(folder: Path, data: Path) -> tuple[int, int]:
    """(computed, resumed) signatures of a rerun of the same command."""
    done = subprocess.run(_cmd(folder, data), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    m = re.search(r"signatures\s+(\d+) computed, \d+ reused[^,\n]*(?:, (\d+) resumed)?",
                  done.stdout)
    assert m, done.stdout
    return int(m[1]), int(m[2] or 0)


def test_ctrl_c_prints_one_line_exits_130_and_the_rerun_resumes(slow_folder, undisturbed,
                                                                  tmp_path):
    data = tmp_path / "data"
    result, workers = _interrupt_mid_signatures(slow_folder, data, signal.SIGINT)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("npimage: interrupted (Ctrl-C)") and "resumes" in last
    assert workers and _all_gone(workers)
    done = _done_rows(data)
    assert 0 < done < N_IMAGES, done
    computed, resumed = _rerun(slow_folder, data)
    assert (computed, resumed) == (N_IMAGES - done, done)
    assert _tables(data) == undisturbed


def test_kill_9_kills_the_workers_too_and_the_rerun_resumes(slow_folder, undisturbed,
                                                            tmp_path):
    """Two workers of ~850 MB each outlived a killed `npimage run` by 80 s and more."""
    data = tmp_path / "data"
    result, workers = _interrupt_mid_signatures(slow_folder, data, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
    assert len(workers) >= 3  # two workers and the forkserver
    assert _all_gone(workers), "workers outlived their parent"
    done = _done_rows(data)
    assert 0 < done < N_IMAGES, done
    computed, resumed = _rerun(slow_folder, data)
    assert (computed, resumed) == (N_IMAGES - done, done)
    assert _tables(data) == undisturbed


def test_a_lost_worker_fails_the_run_with_one_line_and_the_rerun_resumes(
        slow_folder, undisturbed, tmp_path):
    """A worker killed (the OOM killer) left multiprocessing.Pool waiting forever for its
    result: now the run stops at once with one line, and the rerun resumes."""
    data = tmp_path / "data"
    proc = _start_until_first_batch(slow_folder, data)
    workers = _workers(proc.pid)
    busiest = max(workers, key=lambda p: int(Path(f"/proc/{p}/statm").read_text().split()[1]))
    os.kill(busiest, signal.SIGKILL)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("npimage: error: a worker process died")
    assert _all_gone(workers)
    done = _done_rows(data)
    computed, resumed = _rerun(slow_folder, data)
    assert (computed, resumed) == (N_IMAGES - done, done)
    assert _tables(data) == undisturbed


def test_retried_signature_task_takes_the_complete_batch_and_redoes_a_broken_one(small_demo,
                                                                                  tmp_path):
    """A retried task (or a lost worker's batch run again) in the same run: a batch whose
    files and marker are complete is taken as is; one with a file missing is computed."""
    from npimage import pipeline

    settings = Settings().with_overrides(data_dir=tmp_path, fv=False)
    ctx = settings_context("c", str(small_demo.manifest), "r1", settings)
    pipeline.extract(ctx)
    (batch, *_) = pipeline.plan(ctx)
    first = pipeline.signatures(ctx, batch)
    assert first["computed"] > 0 and first["resumed"] == 0
    out = ctx.run_dir / "sig_batches" / Path(batch).name
    mtime = out.stat().st_mtime_ns
    again = pipeline.signatures(ctx, batch)
    assert again == first  # the batch's own counts: nothing computed a second time
    assert out.stat().st_mtime_ns == mtime  # its file untouched
    out.unlink()
    redone = pipeline.signatures(ctx, batch)
    assert redone["computed"] == first["computed"] and out.exists()


_WORKER_START = """
import io, os, sys
import multiprocessing as mp
from multiprocessing import context, reduction, resource_tracker, spawn
import _multiprocessing
from npimage.forkserver import quiet_if_the_run_is_gone

sys.excepthook = quiet_if_the_run_is_gone  # what npimage.worker_boot sets in the forkserver
lock = mp.get_context("forkserver").Lock()  # a semaphore the run shares with its workers
context.set_spawning_popen(object())
data = io.BytesIO()
reduction.dump(spawn.get_preparation_data("worker"), data)
reduction.dump(lock, data)
context.set_spawning_popen(None)
payload = {"gone": data.getvalue(), "cut": b"",
           "broken": data.getvalue()[:-30] + bytes(30)}[sys.argv[1]]
_multiprocessing.sem_unlink(lock._semlock.name)  # the run stopped: its semaphores removed
resource_tracker.unregister(lock._semlock.name, "semaphore")
read, write = os.pipe()
os.write(write, payload)
os.close(write)
try:  # as multiprocessing's forkserver runs a worker it forked
    spawn._main(read, None)
except Exception:
    sys.excepthook(*sys.exc_info())
    sys.stderr.flush()
finally:
    os._exit(1)
"""


@pytest.mark.parametrize("case,traceback", [("gone", False), ("cut", False), ("broken", True)])
def test_a_worker_starting_after_the_run_stopped_prints_no_traceback(case, traceback):
    """A Ctrl-C in the first second of the signature stage can stop the run's process
    while the forkserver still starts a worker: the worker finds the run's semaphores
    removed ("gone") or no start-up data at all ("cut"), and ends silently, the run
    having said why in one line. Any other failure to start ("broken" data) keeps its
    traceback. The worker's real start-up code (multiprocessing.spawn) runs here."""
    plugins = str(Path(__file__).resolve().parents[1] / "plugins")
    done = subprocess.run([sys.executable, "-c", _WORKER_START, case],
                          env={**os.environ, "PYTHONPATH": plugins},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert ("Traceback" in done.stderr) is traceback, done.stderr
    if case == "gone":  # what was swallowed is the failure the Ctrl-C test met
        swallowed = subprocess.run(
            [sys.executable, "-c", _WORKER_START.replace(
                "sys.excepthook = quiet_if_the_run_is_gone", ""), case],
            env={**os.environ, "PYTHONPATH": plugins}, capture_output=True, text=True,
            timeout=60)
        assert "FileNotFoundError" in swallowed.stderr and "_rebuild" in swallowed.stderr


@pytest.mark.timeout(60)
def test_a_ctrl_c_while_waiting_for_the_workers_start_leaves_the_wait_whole():
    """The run waits for the background thread that queues the workers' first tasks
    before it kills them (so that every worker started is killed). A Ctrl-C during that
    wait must not let the next wait return while the thread still runs: Thread.join()
    interrupted so in Python 3.11 marks the thread ended (the run then shut the pool down
    under the thread, which printed a traceback). Real threads, a real interrupt."""
    workers = Workers(2)
    gate = threading.Event()
    workers._in_background(gate.wait)  # still "queuing" until the gate opens
    ctrl_c = (threading.main_thread().ident, signal.SIGINT)  # the terminal's, to this thread
    threading.Timer(0.2, signal.pthread_kill, ctrl_c).start()
    with pytest.raises(KeyboardInterrupt):
        workers._started()
    assert not gate.is_set()
    threading.Timer(0.5, gate.set).start()
    t0 = time.monotonic()
    workers._started()  # the kill's wait: for the thread, not at once
    assert gate.is_set() and time.monotonic() - t0 >= 0.3
