"""TensorFlow's start-up messages stay out of FV task logs unless NPIMAGE_TF_VERBOSE=1.

An FV task's log is its process's stderr (Airflow shows it as ERROR lines): each case runs
the real model path in a fresh process, as a task does, and reads what it wrote there.
"""

from __future__ import annotations

import os
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


def test_startup_lines_shown_when_asked():
    out = _run(TF_ONLY, verbose=True)
    assert any(n in out.stderr for n in NOISE), out.stderr[-2000:]
