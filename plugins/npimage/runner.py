"""Run the whole pipeline in one process tree, without a scheduler (`npimage run`).

Stages run in the DAG's order; signature batches and compare shards, the mapped tasks of
the DAG, run on a pool of worker processes here (one per core by default). Workers are
spawned, not forked, so TensorFlow is only ever imported inside them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
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
    started = datetime.now(UTC)
    n = _workers(workers)
    pipeline.extract(ctx)
    batches = pipeline.plan(ctx)
    results = _map(pipeline.signatures, ctx, batches, n)
    computed = sum(r["computed"] for r in results)
    shards = pipeline.consolidate(ctx)
    _map(pipeline.compare_shard, ctx, shards, n)
    pipeline.verify(ctx)
    pipeline.merge(ctx)
    info = pipeline.publish(ctx, started_at=started, computed=computed)
    info["signatures_computed"] = computed
    info["signatures_reused"] = sum(r["reused"] for r in results)
    if report:
        try:
            info["report"] = pipeline.report(ctx)
        except Exception as exc:  # the matches are published; a report failure is not fatal
            log.exception("report failed")
            info["report_error"] = f"{type(exc).__name__}: {exc}"
    return info
