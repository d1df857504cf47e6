"""Run the whole pipeline in one process tree, without a scheduler (`npimage run`).

Stages run in the order declared in npimage.stages.STAGES, as in the DAG; the mapped
stages (signature batches, compare shards: the mapped tasks of the DAG) run on a pool
of worker processes here (one per core by default). Workers are spawned, not forked,
so TensorFlow is only ever imported inside them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from typing import Any

from npimage.preflight import check_run
from npimage.stages import STAGES, Stage
from npimage.storage.locks import client_run_lock
from npimage.storage.runs import RunContext

log = logging.getLogger("npimage")


def _workers(requested: int | None) -> int:
    return requested or len(os.sched_getaffinity(0))


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the main process, which stops them (no traceback each)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _map(fn: Callable[..., Any], ctx: RunContext, items: list[Any], workers: int) -> list[Any]:
    """fn(ctx, item) for every item, in worker processes when it pays.

    On Ctrl-C or a failed item the other workers are stopped at once, and the error
    (KeyboardInterrupt included) is raised in the main process.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(ctx, item) for item in items]
    pool = mp.get_context("spawn").Pool(min(workers, len(items)),
                                        initializer=_ignore_interrupts)
    try:
        results = pool.starmap(fn, [(ctx, item) for item in items], chunksize=1)
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()
    return results


def run_pipeline(ctx: RunContext, workers: int | None = None, report: bool = True
                 ) -> dict[str, Any]:
    """Every stage of a run; returns the run summary (see pipeline.summary).

    The run's environment is checked first (npimage.preflight): nothing is computed when
    it could not be published.
    The client's run lock (npimage.storage.locks) is held throughout: a second run of the same
    client is refused with RunInProgress before it writes anything.
    """
    check_run(ctx)  # a read-only data dir or an unreachable database: refused now
    with client_run_lock(ctx.client_dir, ctx.client_id, ctx.run_id):
        return _run_stages(ctx, workers, report)


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
