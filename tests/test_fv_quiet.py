"""TensorFlow's start-up messages stay out of FV task logs unless NPIMAGE_TF_VERBOSE=1.

An FV task's log is its process's stderr (Airflow shows it as ERROR lines): each case runs
the real model path in a fresh process, as a task does, and reads what it wrote there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

NOISE = ("cuInit", "cpu_feature_guard", "cudart_stub", "oneDNN custom operations",
         "absl::InitializeLog")

FV_TASK = """
import sys
from pathlib import Path
from PIL import Image
from npimage.fv import load_extractor
extractor = load_extractor("efficientnet-lite0", Path(sys.argv[1]))
print(extractor.embed([Image.new("RGB", (64, 48), "red")]).shape)
print("warning from the job itself", file=sys.stderr)
"""

TF_ONLY = "from npimage.fv.quiet import tensorflow; tensorflow()"


def _run(code: str, *args: str, verbose: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "NPIMAGE_TF"))}
    env["PYTHONPATH"] = str(ROOT / "plugins")
    if verbose:
        env["NPIMAGE_TF_VERBOSE"] = "1"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=600, check=True)


def test_fv_task_log_has_no_tensorflow_startup_lines(tmp_path):
    out = _run(FV_TASK, str(tmp_path / "models"))
    assert out.stdout.strip().splitlines()[-1] == "(1, 1280)"
    found = [line for line in out.stderr.splitlines() if any(n in line for n in NOISE)]
    assert found == [], found
    assert "warning from the job itself" in out.stderr  # stderr itself is not swallowed
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ


def test_npimage_run_with_fv_keeps_stderr_clean_in_its_worker_processes(tmp_path):
    """`npimage run` with FV on 2 workers (2 batches): TensorFlow loads in the workers; none
    of its start-up lines reaches the run's stderr, which holds only npimage's own lines."""
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for i, colour in enumerate(("red", "green", "blue", "yellow")):
        Image.new("RGB", (64, 48), colour).save(src / f"{i}.jpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "NPIMAGE_TF"))}
    env.update(PYTHONPATH=str(ROOT / "plugins"), NPIMAGE_BATCH_SIZE="2",
               NPIMAGE_MODEL_CACHE=str(tmp_path / "models"))
    out = subprocess.run([sys.executable, "-m", "npimage.cli", "run", "--client", "q",
                          "--source", str(src), "--data-dir", str(tmp_path / "data"),
                          "--no-report", "--read", "none", "--workers", "2"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "signatures        4 computed" in out.stdout
    foreign = [line for line in out.stderr.splitlines()
               if line.strip() and not re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) ", line)]
    assert foreign == [], foreign


def test_startup_lines_shown_when_asked():
    out = _run(TF_ONLY, verbose=True)
    assert any(n in out.stderr for n in NOISE), out.stderr[-2000:]


BORROWED_STDERR = """
import logging.config, sys, tempfile
from npimage.fv.quiet import tensorflow
borrowed = tempfile.TemporaryFile("w+")
real, sys.stderr = sys.stderr, borrowed  # a test's capture, a task's redirection
tensorflow()  # imports absl, whose handler takes the sys.stderr of this moment
sys.stderr = real
logging.config.dictConfig({"version": 1})  # shuts every handler down, as Airflow's does
print("closed" if borrowed.closed else "open")
"""


def test_loading_tensorflow_leaves_a_borrowed_stderr_open():
    """absl's handler closed, at the next logging reconfiguration, the sys.stderr it saw when
    TensorFlow loaded: a suite's captured stream died after an FV run and the DAG test that
    followed it failed with "I/O operation on closed file" (only in that order)."""
    assert _run(BORROWED_STDERR).stdout.split() == ["open"]
