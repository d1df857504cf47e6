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
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from npimage.stages import STAGES, Stage
from npimage.storage.locks import client_run_lock
from npimage.storage.runs import RunContext

log = logging.getLogger("npimage")


def _workers(requested: int | None) -> int:
    return requested or len(os.sched_getaffinity(0))


def _map(fn: Callable, ctx: RunContext, items: list, workers: int) -> Iterable[Any]:
    """fn(ctx, item) for every item, in worker processes when it pays."""
    if workers <= 1 or len(items) <= 1:
        return [fn(ctx, item) for item in items]
    with ProcessPoolExecutor(max_workers=min(workers, len(items)),
                             mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, [ctx] * len(items), items))


def run_pipeline(ctx: RunContext, workers: int | None = None, report: bool = True
                 ) -> dict[str, Any]:
    """Every stage of a run; returns the run summary (see pipeline.summary).

    The client's run lock (npimage.storage.locks) is held throughout: a second run of the same
    client is refused with RunInProgress before it writes anything.
    """
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
