"""Import TensorFlow without its start-up noise in task logs.

TensorFlow's C++ side writes to file descriptor 2 while it loads: oneDNN and CPU feature
notices, "Could not find cuda drivers", and `E ... failed call to cuInit` on a machine
without a GPU. Airflow shows stderr as ERROR lines, so every FV task log looked failed.
TF_CPP_MIN_LOG_LEVEL does not silence these (they precede absl's initialisation), so the
first import, and the device discovery that triggers cuInit, run with fd 2 captured; the
known start-up lines are dropped and anything else is written back to stderr unchanged.

NPIMAGE_TF_VERBOSE=1 keeps everything. Nothing global is changed besides fd 2 for the
duration of the import (restored in a `finally`), so no environment variable leaks into
the task or its children. `quiet_worker` goes further for a process that exists only to
work for `npimage run`: TensorFlow's later INFO lines (XLA, oneDNN at the first batch) and
absl's Python warnings are off there too.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

#: TensorFlow start-up lines that say nothing about this job (a CPU-only machine is normal).
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|"
    r"(port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_dnn|cuda_fft|cuda_blas|"
    r"cuda_executor|computation_placer|gpu_device)\.cc:\d+\]|"
    r"To enable the following instructions:|rebuild TensorFlow with the appropriate|"
    r"failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning")

#: What TF Lite's converter and interpreter write to file descriptor 2 on every conversion
#: or model load (converter flags it ignores, the quantiser's summary, the SavedModel
#: reader's progress, "Created TensorFlow Lite XNNPACK delegate for CPU").
LITE_NOISE = re.compile(
    r"(tf_tfl_flatbuffer_helpers|reader|loader|mlir_graph_optimization_pass|dump_mlir_util|"
    r"tf_tfl_translate|flatbuffer_export)\.cc:\d+\]|"
    r"^fully_quantize: |Created TensorFlow Lite XNNPACK delegate")

_LOCK = threading.Lock()
_CAPTURE = threading.Lock()


def verbose() -> bool:
    """Whether the user asked to see TensorFlow's start-up messages (NPIMAGE_TF_VERBOSE)."""
    return os.environ.get("NPIMAGE_TF_VERBOSE", "").strip().lower() in ("1", "true", "yes")


def quiet_worker() -> None:
    """In a worker process of `npimage run`, before TensorFlow loads: its C++ INFO lines
    (TF_CPP_MIN_LOG_LEVEL=1, unless set) and absl's Python warnings are not shown.

    Errors still are. Nothing changes with NPIMAGE_TF_VERBOSE=1. Only for processes that
    the run starts (the variable reaches their children): a DAG task keeps its environment.
    """
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)


def tensorflow() -> ModuleType:
    """The `tensorflow` module, imported (the first time) with its start-up noise removed,
    absl's handler kept off the caller's streams (`release_absl_stream`)."""
    tf = _import_tensorflow()
    release_absl_stream()
    return tf


def _import_tensorflow() -> ModuleType:
    """`import tensorflow`, the first time with file descriptor 2 captured and replayed
    without the known start-up lines."""
    if "tensorflow" in sys.modules or verbose():
        import tensorflow as tf

        return tf
    with _LOCK:
        if "tensorflow" in sys.modules:
            import tensorflow as tf

            return tf
        with tempfile.TemporaryFile() as captured:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(captured.fileno(), 2)
            try:
                import tensorflow as tf

                tf.config.list_physical_devices()  # device discovery: where cuInit complains
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            captured.seek(0)
            _replay(captured.read().decode(errors="replace"))
    return tf


def release_absl_stream() -> None:
    """Point absl's logging handler (made when TensorFlow imports absl, and never attached by
    npimage) at sys.__stderr__, which it never closes.

    Why: the handler keeps the sys.stderr of the moment absl was imported, and closes it at
    the next `logging.shutdown()` of every handler (what any `logging.config.dictConfig`
    does, Airflow's included) unless it is the sys.stderr of then. In a process whose
    sys.stderr was a temporary stream when the model loaded (a test's capture, a task's
    redirection), that closed a stream another part of the process still wrote to: the
    next write failed with "I/O operation on closed file"."""
    absl_logging = sys.modules.get("absl.logging")
    if absl_logging is not None and sys.__stderr__ is not None:
        absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


@contextmanager
def lite_output() -> Iterator[None]:
    """Run the block (a TF Lite conversion or interpreter creation) with file descriptor 2
    captured: `LITE_NOISE` lines are dropped, anything else is written back to stderr.
    Nothing is captured with NPIMAGE_TF_VERBOSE=1."""
    if verbose():
        yield
        return
    with _CAPTURE, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            _replay(captured.read().decode(errors="replace"), LITE_NOISE)


def _replay(text: str, noise: re.Pattern[str] = STARTUP_NOISE) -> None:
    """Write back to stderr every captured line that is not known noise."""
    kept = [line for line in text.splitlines() if line.strip() and not noise.search(line)]
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")
        sys.stderr.flush()
