"""What every worker process of `npimage run` loads before its first task, loaded once.

`npimage run` forks its workers from one server process (multiprocessing's forkserver,
npimage.runner) that imports this module first: the library, the per-image stages'
modules and Numba's typing and lowering registries are then loaded once per run, not
once per worker. Loaded by each worker, they cost ~0.85 s of CPU (imports) plus ~0.45 s
at its first compiled call (Numba's registries, which import scipy.linalg): ~1.3 s of
CPU per worker, at the start of the signature stage, when every worker waits for them.

Nothing here starts a Python thread or loads TensorFlow or OpenCV: a forked worker starts from
this process's memory, and loads its FV model (TF Lite, or TensorFlow) itself.
"""

from __future__ import annotations

import os
import sys

from numba import njit

# Not npimage.cli: it can be the run's main module (`python -m npimage.cli`), which each
# worker runs again as `__mp_main__`, and runpy warns when a module it runs so is imported
# already.
from npimage import forkserver, pipeline, runner  # the stage functions, the worker init


@njit(cache=True)
def _first_call(x: int) -> int:
    """A compiled function to call once: Numba's first call in a process loads its
    registries (~0.45 s of CPU), whatever the function."""
    return x + 1


def _tie_to_the_run() -> None:
    """In the forkserver: die with the run's process that started it (FORKSERVER_OF), so
    that its workers, which die with the forkserver, do too, however the run ends."""
    started_by = os.environ.get(forkserver.FORKSERVER_OF, "")
    if started_by.isdigit() and int(started_by) == os.getppid():
        runner.die_with_parent(int(started_by))


_tie_to_the_run()
sys.excepthook = forkserver.quiet_if_the_run_is_gone
pipeline.preload(pipeline.WORKER_MODULES)
_first_call(1)
