"""Run the whole pipeline in one process tree, without a scheduler (`npimage run`).

Stages run in the DAG's order; signature batches and compare shards, the mapped tasks of
the DAG, run on a pool of worker processes here (one per core by default). Workers are
spawned, not forked, so TensorFlow is only ever imported inside them.
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
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

from npimage import pipeline
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


def _map(fn: Callable, ctx: RunContext, items: list, workers: int) -> Iterable[Any]:
    """fn(ctx, item) for every item, in worker processes when it pays.

    On any exception (Ctrl-C included) the pending items are cancelled and the workers
    are killed at once rather than waited for.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(ctx, item) for item in items]
    pool = ProcessPoolExecutor(max_workers=min(workers, len(items)),
                               mp_context=mp.get_context("spawn"),
                               initializer=_worker_init, initargs=(os.getpid(),))
    try:
        results = list(pool.map(fn, [ctx] * len(items), items))
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

    The client's run lock (npimage.storage.locks) is held throughout: a second run of the same
    client is refused with RunInProgress before it writes anything.
    """
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
    started = datetime.now(UTC)
    n = _workers(workers)
    pipeline.extract(ctx, started_at=started)
    batches = pipeline.plan(ctx)
    results = _map(pipeline.signatures, ctx, batches, n)
    computed = sum(r["computed"] for r in results)
    shards = pipeline.consolidate(ctx)
    _map(pipeline.compare_shard, ctx, shards, n)
    pipeline.merge(ctx)
    info = pipeline.publish(ctx, started_at=started, computed=computed)
    info["signatures_computed"] = computed
    info["signatures_reused"] = sum(r["reused"] for r in results)
    info["signatures_resumed"] = sum(r.get("resumed", 0) for r in results)
    if report:
        try:
            info["report"] = pipeline.report(ctx)
        except Exception as exc:  # the matches are published; a report failure is not fatal
            log.exception("report failed")
            info["report_error"] = f"{type(exc).__name__}: {exc}"
    return info
