"""Run the whole pipeline in one process tree, without a scheduler (`npimage run`).

Stages run in the order declared in npimage.stages.STAGES, as in the DAG; the mapped
stages (signature batches, compare shards: the mapped tasks of the DAG) run on a pool
of worker processes here (one per core by default). Workers are spawned, not forked,
so TensorFlow is only ever imported inside them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from npimage.errors import UserError
from npimage.preflight import check_run
from npimage.stages import STAGES, Stage
from npimage.storage.locks import client_run_lock
from npimage.storage.runs import RunContext

log = logging.getLogger("npimage")


def _workers(requested: int | None) -> int:
    return requested or len(os.sched_getaffinity(0))


#: prctl option: the signal a process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def _worker_init(parent_pid: int) -> None:
    """Tie a worker's life to the run's process; leave Ctrl-C to the parent.

    PR_SET_PDEATHSIG makes the kernel SIGKILL the worker when the process that started
    it dies, however it dies (kill -9 included), so no worker keeps its ~1 GB alive. On a
    system without prctl, a watchdog thread polls the parent instead. SIGINT is ignored:
    the parent handles Ctrl-C and stops the workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError):
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _watch_parent(parent_pid: int, interval: float = 1.0) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)


class WorkerLost(UserError):
    """A worker process died (killed, out of memory) while running a mapped stage."""

    exit_code = 1


def _map(fn: Callable[..., Any], ctx: RunContext, items: list[Any], workers: int) -> list[Any]:
    """fn(ctx, item) for every item, in worker processes when it pays.

    On Ctrl-C or a failed item the other workers are stopped at once, and the error
    (KeyboardInterrupt included) is raised in the main process. A worker that dies (the
    OOM killer, kill -9) fails the stage with WorkerLost instead of leaving it waiting
    forever for that worker's result (what multiprocessing.Pool does).
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(ctx, item) for item in items]
    pool = ProcessPoolExecutor(max_workers=min(workers, len(items)),
                               mp_context=mp.get_context("spawn"),
                               initializer=_worker_init, initargs=(os.getpid(),))
    try:
        results = list(pool.map(fn, [ctx] * len(items), items))
    except BrokenProcessPool as exc:
        _kill_workers(pool)
        raise WorkerLost(
            "a worker process died (killed, or out of memory) during the run; nothing "
            "published", hint="run the same command again: it resumes from the batches "
            "already complete") from exc
    except BaseException:
        _kill_workers(pool)
        raise
    pool.shutdown()
    return results


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what has not started, kill the running workers."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.join(timeout=5)


def run_pipeline(ctx: RunContext, workers: int | None = None, report: bool = True
                 ) -> dict[str, Any]:
    """Every stage of a run; returns the run summary (see pipeline.summary).

    The run's environment is checked first (npimage.preflight): nothing is computed when
    it could not be published.
    The client's run lock (npimage.storage.locks) is held throughout: a second run of the same
    client is refused with RunInProgress before it writes anything.
    """
    from npimage import pipeline

    check_run(ctx)  # a read-only data dir or an unreachable database: refused now
    with client_run_lock(ctx.client_dir, ctx.client_id, ctx.run_id):
        try:
            return _run_stages(ctx, workers, report)
        except KeyboardInterrupt:
            pipeline.record_failure(ctx, "interrupted (Ctrl-C); run again to resume")
            raise
        except Exception as exc:
            pipeline.record_failure(ctx, exc)
            raise


def _run_stages(ctx: RunContext, workers: int | None, report: bool) -> dict[str, Any]:
    """Each declared stage in turn; returns publish's summary (+ the report's path)."""
    n = _workers(workers)
    outputs: dict[str, Any] = {}
    for stage in STAGES:
        if stage.name == "report" and not report:
            continue
        outputs[stage.name] = _run_stage(stage, ctx, outputs, n)
    info = dict(outputs["publish"])
    if report:
        info.update(_report_outcome(outputs["report"]))
    return info


def _run_stage(stage: Stage, ctx: RunContext, outputs: dict[str, Any], workers: int) -> Any:
    """One stage: mapped over an earlier stage's items, or once; optional ones never raise."""
    fn = stage.resolve()
    try:
        if stage.over is not None:
            return _map(fn, ctx, list(outputs[stage.over]), workers)
        return fn(ctx)
    except Exception as exc:
        if stage.required:
            raise
        log.exception("%s failed", stage.name)  # the matches are published: not fatal
        return exc


def _report_outcome(result: Any) -> dict[str, Any]:
    if isinstance(result, Exception):
        return {"report_error": f"{type(result).__name__}: {result}"}
    return {"report": result}
