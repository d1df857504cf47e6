"""The process `npimage run`'s workers are forked from: start, stop, and its context.

A multiprocessing forkserver whose preload is npimage.worker_boot: it loads the library
and Numba's registries once, and every worker is a fork of it (npimage.runner). Light on
purpose (no NumPy, no Arrow): `npimage run` starts it before it loads the library itself,
so the two load side by side.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import traceback
from multiprocessing import forkserver
from types import TracebackType

#: The context of the workers' pool (and of the objects shared with them).
CONTEXT = mp.get_context("forkserver")
CONTEXT.set_forkserver_preload(["npimage.worker_boot"])

#: Set for the forkserver: the pid of the process that started it, which it dies with
#: (npimage.worker_boot calls runner.die_with_parent).
FORKSERVER_OF = "NPIMAGE_FORKSERVER_OF"


def start() -> None:
    """Start the forkserver now if it is not running; it loads npimage.worker_boot while
    this process goes on.

    From the thread that will outlive the run's workers (PR_SET_PDEATHSIG follows the
    thread that started a process: the run's main thread). SIGINT is blocked while it
    starts: a Ctrl-C reaches the whole process group, and the forkserver and the workers
    inherit it blocked until they ignore it (no traceback from a process starting up).
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        os.environ[FORKSERVER_OF] = str(os.getpid())
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def stop() -> None:
    """Stop the forkserver (started again by the next pool) and wait for it: a process
    that outlived the run would take its CPU time, and that of the workers it reaped, out
    of the run's own accounting (getrusage of its children).

    Killed rather than asked: its workers are killed already, and one stuck somehow must
    not hang the run's end (it dies with the forkserver). Through multiprocessing's
    private `_stop` (its tests' way): absent, the forkserver exits with this process.
    """
    server = getattr(forkserver, "_forkserver", None)
    pid, stop_it = getattr(server, "_forkserver_pid", None), getattr(server, "_stop", None)
    if pid is None or stop_it is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    stop_it()


#: What a worker meets when the run's process stopped while the worker was starting (a
#: Ctrl-C in the first second of the signature stage): no start-up data (the run closed
#: the pipe), or the run's semaphores already removed.
_RUN_GONE = (EOFError, FileNotFoundError, BrokenPipeError, ConnectionResetError)


def quiet_if_the_run_is_gone(kind: type[BaseException], value: BaseException,
                             tb: TracebackType | None) -> None:
    """sys.excepthook of the forkserver, which its workers inherit: a worker that fails to
    start because the run's process has already stopped ends without a traceback (the run
    has said why it stopped, in one line); any other error is printed as Python would."""
    frames = traceback.extract_tb(tb)
    starting = any(f.name == "_main" and f.filename.endswith(os.path.join("multiprocessing",
                                                                           "spawn.py"))
                   for f in frames)
    if starting and issubclass(kind, _RUN_GONE):
        return
    sys.__excepthook__(kind, value, tb)
