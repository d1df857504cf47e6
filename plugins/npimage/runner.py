"""Run the whole pipeline in one process tree, without a scheduler (`npimage run`).

Stages run in the order declared in npimage.stages.STAGES, as in the DAG; the mapped
stages (signature batches, compare shards: the mapped tasks of the DAG) run on a pool
of worker processes here (one per core by default). Workers are forked from a server
process that loaded the library once (multiprocessing's forkserver preloading
npimage.worker_boot), never from the run's process: TensorFlow is only ever imported
inside a worker, and no worker inherits the run's threads.

The workers are started with the run (the forkserver loads the library while extract
runs) and kept for every mapped stage and for verify (Stage.on_worker); with FV, those
holding the model are replaced after the per-image stages by fresh ones. Each adds the
images it finishes to a counter shared with this process, which shows one progress bar
per stage (npimage.progress.StageBar).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from npimage import forkserver, progress
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


def _worker_init(parent_pid: int, counter: progress.Counter | None = None,
                 warm: bool = True, threads: int | None = None) -> None:
    """Tie a worker's life to the run's process; leave Ctrl-C to the parent; report progress.

    The worker is killed when the process that forked it dies (`die_with_parent`): the
    forkserver, which is itself killed when the run's process (`parent_pid`) dies, however
    it dies (kill -9 included), so no worker keeps its ~1 GB alive. SIGINT is ignored:
    the parent handles Ctrl-C and stops the workers. Every `Progress` of the worker adds
    to `counter`, the stage's bar in the parent. `warm`: import the stage functions now
    (a no-op when the forkserver loaded them), not when the first batch arrives.
    `threads`: the worker's share of the cores, given to TensorFlow before it starts
    (NPIMAGE_FV_THREADS, unless the user set it): n workers each running TensorFlow on
    every core would fight over them.
    """
    started_by = os.getppid()  # the forkserver
    if threads is not None:
        os.environ.setdefault("NPIMAGE_FV_THREADS", str(threads))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by forkserver.start
    die_with_parent(started_by)
    if not _alive(parent_pid):  # the run ended while this worker started
        os._exit(1)
    if counter is not None:
        progress.set_sink(progress.counter_sink(counter))
    from npimage.fv.quiet import quiet_worker

    quiet_worker()  # TensorFlow, if a stage loads it here, says nothing but errors
    if warm:
        from npimage import pipeline

        pipeline.preload(pipeline.WORKER_MODULES)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent (`parent_pid`) dies.

    PR_SET_PDEATHSIG, however the parent dies (kill -9 included); on a system without
    prctl, a watchdog thread polls the parent instead. Exits now when the parent died
    before the signal was set (this process already has another parent).
    """
    try:
        # the process's own symbols, libc's among them: ctypes.util.find_library("c")
        # would run `ldconfig -p` in every worker (a fork and an exec, ~10 ms)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError):
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


def _ready() -> None:
    """A no-op task: submitting one per worker makes the pool start them all now."""


def _alive(pid: int) -> bool:
    """Whether process `pid` still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _watch_parent(parent_pid: int, interval: float = 1.0) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)


class WorkerLost(UserError):
    """A worker process died (killed, out of memory) while running a mapped stage."""

    exit_code = 1


class Workers:
    """The run's worker processes: started once, early, and reused by every mapped stage.

    Items run in this process with one worker, or when a single item would need workers
    started for it (no process start for tiny work). Work is counted on `counter` wherever
    it runs.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.counter: Any = forkserver.CONTEXT.Value("q", 0)
        self.pool: ProcessPoolExecutor | None = None
        self._starting: threading.Event | None = None

    def threads(self) -> int:
        """Cores per worker: the process's CPU affinity shared between the n workers."""
        return max(1, len(os.sched_getaffinity(0)) // max(1, self.n))

    def start(self) -> None:
        """Start the n workers now, in the background: this process goes on (extract)
        while the forkserver loads the library and forks them."""
        if self.n <= 1 or self.pool is not None:
            return
        self.pool = ProcessPoolExecutor(max_workers=self.n, mp_context=forkserver.CONTEXT,
                                        initializer=_worker_init,
                                        initargs=(os.getpid(), self.counter, True,
                                                  self.threads()))
        forkserver.start()  # from this thread, which the run's workers do not outlive
        self._in_background(_submit_each, self.pool, self.n, _ready)

    def _in_background(self, fn: Callable[..., None], *args: Any) -> None:
        """fn(*args) in a thread, after what was put in the background before: submits to
        a starting pool wait for the forkserver's forks, this process does not."""
        before = self._starting
        done = threading.Event()

        def run() -> None:
            try:
                if before is not None:
                    before.wait()
                fn(*args)
            finally:
                done.set()

        threading.Thread(target=run, name="npimage-workers-start", daemon=True).start()
        self._starting = done

    def _started(self) -> None:
        """Wait for what was put in the background (the workers started, their first tasks
        queued): before a stage's items are queued behind them, or the workers killed.

        On an Event, not Thread.join: a Ctrl-C that interrupts join() can leave Python 3.11
        taking the thread for ended while it still runs, and a second join then returns at
        once (the workers would be killed while it still queues tasks for them)."""
        if self._starting is not None:
            self._starting.wait()
            self._starting = None

    def map(self, fn: Callable[..., Any], ctx: RunContext, items: list[Any]) -> list[Any]:
        """fn(ctx, item) for every item, in the workers when it pays; see `_map`.

        In this process with one worker, or for a single item when no worker is running
        (none is started for it); on the running workers otherwise, a single item too
        (they are ready, and TensorFlow stays out of this process).
        """
        if self.n <= 1 or (self.pool is None and len(items) <= 1):
            progress.set_sink(progress.counter_sink(self.counter))
            try:
                return [fn(ctx, item) for item in items]
            finally:
                progress.set_sink(None)
        self.start()
        self._started()
        assert self.pool is not None
        return _map(self.pool, fn, ctx, items, self.kill)

    def call(self, fn: Callable[[RunContext], Any], ctx: RunContext) -> Any:
        """fn(ctx) on one of the running workers, else in this process (none running).

        For a stage whose libraries are loaded in the workers already (Stage.on_worker).
        Its log records are shown here, as if it had run here; its errors are raised here
        as `map`'s are.
        """
        if self.pool is None:
            return fn(ctx)
        self._started()
        pool = self.pool
        result, records = _map(pool, _logged, ctx, [(fn, log.getEffectiveLevel())],
                               self.kill)[0]
        for record in records:
            logging.getLogger(record.name).handle(record)
        return result

    def preload_model(self, ctx: RunContext) -> None:
        """Have each worker load the FV model now (a task per worker, queued before any
        batch, in the background; a failure shows again, and is raised, at the first batch)."""
        if self.pool is not None:
            from npimage.pipeline import load_fv_model

            self._in_background(_submit_each, self.pool, self.n, load_fv_model, ctx)

    def kill(self) -> None:
        """Stop the workers now: cancel what has not started, kill the running ones.

        Also how idle workers end between stages and at the end of a run: killed rather
        than waited for, as a worker holding TensorFlow takes seconds to tear itself down.
        """
        self._started()  # every worker started, so that all are killed
        if self.pool is not None:
            _kill_workers(self.pool)
            self.pool = None


def _submit_each(pool: ProcessPoolExecutor, n: int, fn: Callable[..., Any], *args: Any) -> None:
    """Submit fn(*args) n times: one per worker (the pool starts a process per pending
    task, each start waiting for the forkserver's fork)."""
    for _ in range(n):
        try:
            pool.submit(fn, *args)
        except RuntimeError:  # shut down: the run is stopping, and says why itself
            return


class _Records(logging.Handler):
    """Keeps the log records of a worker's call, made picklable (message formatted)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg, record.args = record.getMessage(), None
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
        except Exception:  # a bad format string: reported as logging does, never raised
            self.handleError(record)
            return
        self.records.append(record)


def _logged(ctx: RunContext, job: tuple[Callable[[RunContext], Any], int]
            ) -> tuple[Any, list[logging.LogRecord]]:
    """fn(ctx) in a worker, with the records `npimage` logged meanwhile at `level` and up
    (the worker has no log handler of its own: they would be lost)."""
    fn, level = job
    logger = logging.getLogger("npimage")
    handler, before = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        return fn(ctx), handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def _map(pool: ProcessPoolExecutor, fn: Callable[..., Any], ctx: RunContext,
         items: list[Any], kill: Callable[[], None]) -> list[Any]:
    """fn(ctx, item) for every item on the pool, in order of the items.

    On Ctrl-C or a failed item the other workers are stopped at once, and the error
    (KeyboardInterrupt included) is raised in the main process. A worker that dies (the
    OOM killer, kill -9) fails the stage with WorkerLost instead of leaving it waiting
    forever for that worker's result (what multiprocessing.Pool does).
    """
    try:
        return list(pool.map(fn, [ctx] * len(items), items))
    except BrokenProcessPool as exc:
        kill()
        raise WorkerLost(
            "a worker process died (killed, or out of memory) during the run; nothing "
            "published", hint="run the same command again: it resumes from the batches "
            "already complete") from exc
    except BaseException:
        kill()
        raise


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what has not started, kill the running workers."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.join(timeout=5)


def run_pipeline(ctx: RunContext, workers: int | None = None, report: bool = True,
                 pool: Workers | None = None) -> dict[str, Any]:
    """Every stage of a run; returns the run summary (see pipeline.summary).

    The run's environment is checked first (npimage.preflight): nothing is computed when
    it could not be published.
    The client's run lock (npimage.storage.locks) is held throughout: a second run of the same
    client is refused with RunInProgress before it writes anything.
    `pool`: worker processes the caller started already (`npimage run` starts them before
    it loads the library), else `workers` of them are started here; stopped at the end.
    """
    from npimage import pipeline

    pool = pool or Workers(_workers(workers))
    try:
        check_run(ctx)  # a read-only data dir or an unreachable database: refused now
        with client_run_lock(ctx.client_dir, ctx.client_id, ctx.run_id):
            try:
                return _run_stages(ctx, pool, report)
            except KeyboardInterrupt:
                pipeline.record_failure(ctx, "interrupted (Ctrl-C); run again to resume")
                raise
            except Exception as exc:
                pipeline.record_failure(ctx, exc)
                raise
    except BaseException:
        pool.kill()
        raise
    finally:
        forkserver.stop()


def start_workers(requested: int | None) -> Workers:
    """The worker processes of a run, started now (one per core unless `requested`)."""
    pool = Workers(_workers(requested))
    pool.start()
    return pool


def _run_stages(ctx: RunContext, pool: Workers, report: bool) -> dict[str, Any]:
    """Each declared stage in turn; returns publish's summary (+ the report's path and
    `stage_seconds`, the wall time of each stage)."""
    pool.start()  # the workers start up while extract runs
    if ctx.fv:
        pool.preload_model(ctx)
    outputs: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    try:
        for stage in STAGES:
            if stage.name == "report" and not report:
                continue
            t0 = time.perf_counter()
            outputs[stage.name] = _run_stage(stage, ctx, outputs, pool)
            seconds[stage.name] = time.perf_counter() - t0
            log.debug("stage %s: %.2fs", stage.name, seconds[stage.name])
            if stage.name == _LAST_PER_IMAGE_STAGE and ctx.fv:
                pool.kill()  # their FV model is not needed by compare: free it
                pool.start()  # forked afresh, Numba loaded: for compare and verify
    finally:
        pool.kill()
    info = dict(outputs["publish"])
    if report:
        info.update(_report_outcome(outputs["report"]))
    info["stage_seconds"] = seconds
    return info


#: The last stage mapped over the planned batches (after it the workers' models are idle).
_LAST_PER_IMAGE_STAGE = "signatures"


def _run_stage(stage: Stage, ctx: RunContext, outputs: dict[str, Any], pool: Workers) -> Any:
    """One stage: mapped over an earlier stage's items, or once; optional ones never raise."""
    fn = stage.resolve()
    try:
        if stage.over is not None:
            return _run_mapped(stage, fn, ctx, list(outputs[stage.over]), pool)
        if stage.name == "plan":  # batches sized for these workers (npimage.ingest.plan)
            return fn(ctx, workers=pool.n)
        if stage.on_worker:
            return pool.call(fn, ctx)
        return fn(ctx)
    except Exception as exc:
        if stage.required:
            raise
        log.exception("%s failed", stage.name)  # the matches are published: not fatal
        return exc


def _run_mapped(stage: Stage, fn: Callable[..., Any], ctx: RunContext, items: list[Any],
                pool: Workers) -> list[Any]:
    """A mapped stage over `items` with one progress bar fed by every worker."""
    if not items:
        return []
    from npimage.pipeline import work_units

    total, unit = work_units(ctx, stage.name, items)
    pool.counter.value = 0
    if stage.name == "signatures" and pool.n > 1:  # this process waits: load what comes next
        from npimage.pipeline import later_modules, preload

        threading.Thread(target=preload, args=(later_modules(ctx),), daemon=True).start()
    with progress.StageBar(pool.counter, total, stage.name, unit):
        return pool.map(fn, ctx, items)


def _report_outcome(result: Any) -> dict[str, Any]:
    if isinstance(result, Exception):
        return {"report_error": f"{type(result).__name__}: {result}"}
    return {"report": result}
