"""The npimage_dedup DAG's tasks, built from the declared stages (npimage.stages.STAGES).

dags/npimage_dedup.py declares the DAG (id, params, defaults) and calls
`build_stage_tasks()`; everything else is here: the run context from the params, one
TaskFlow task per stage (mapped stages expanded over the items of the stage they map
over), the client's lock taken by the first task and released by a teardown.
"""

from __future__ import annotations

import os
from typing import Any

from npimage.config import Settings
from npimage.orchestration.connection import conn_ref
from npimage.stages import STAGES, Stage

#: Airflow pools sized by the deployment (include/pools.json, docs/SCALE.md): how many
#: signature and compare tasks run at once across all workers and runs, instead of a fixed
#: cap here. A pool that does not exist keeps its tasks "scheduled" forever (Airflow 3.3
#: only logs a warning), so the deployment creates them; NPIMAGE_POOL_<STAGE>="" in the
#: dag-processor's environment puts that stage in default_pool instead.
POOLS: dict[str, str | None] = {
    name: os.environ.get(f"NPIMAGE_POOL_{name.upper()}", f"npimage_{name}") or None
    for name in ("signatures", "compare")}


def run_context(params: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The run context (a small dict for XCom) from the DAG params and the DAG run's id.

    Settings are read here, once, and travel in the context to every task.
    """
    from npimage.pipeline import settings_context

    source, backend = conn_ref(params["source"]), conn_ref(params["backend"])
    settings = Settings().with_overrides(
        fv=bool(params["fv"]), fv_model=params["fv_model"] or None, top_k=int(params["top_k"]),
        threshold=float(params["threshold"]), weights_file=params["weights"] or None,
        read=params.get("read") or None, text_max=params.get("text_max"),
        families=bool(params.get("families", True)))
    ctx = settings_context(params["client_id"], source, run_id, settings,
                           mode=params["mode"], backend=backend or None,
                           allow_shrink=bool(params.get("allow_shrink", False)),
                           max_shrink=float(params.get("max_shrink", 0.5)))
    return ctx.to_dict()


def _current_context() -> dict[str, Any]:
    from airflow.sdk import get_current_context

    context = get_current_context()
    return run_context(context["params"], context["run_id"])


def _public(ctx: dict[str, Any]) -> dict[str, Any]:
    """The context as XCom carries it: no DSN password (npimage.redact)."""
    from npimage.pipeline import public_context
    from npimage.storage.runs import RunContext

    return public_context(RunContext.from_dict(ctx))


def _with_secrets(data: dict[str, Any]) -> Any:
    """The RunContext of an XCom dict, its source and backend taken again from the params
    (XCom holds them without password)."""
    from airflow.sdk import get_current_context

    from npimage.storage.runs import RunContext

    params = get_current_context()["params"]
    secrets = {"source": conn_ref(params["source"]),
               "backend": conn_ref(params["backend"]) or None}
    return RunContext.from_dict({**data, **secrets})


def _no_retry_on_input_error(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(*args); bad input (npimage.errors.InputError, e.g. a source that shrank) fails
    the task without retries: a retry would see the same input."""
    from airflow.sdk.exceptions import AirflowFailException

    from npimage.errors import InputError

    try:
        return fn(*args, **kwargs)
    except InputError as exc:
        raise AirflowFailException(str(exc)) from exc


def record_failure(context: dict[str, Any]) -> None:
    """on_failure_callback of every task: mark the run 'failed' in the backend's
    npimage_run with the task's error (after its last retry), whichever stage failed."""
    from npimage.pipeline import record_failure as record
    from npimage.storage.runs import RunContext

    ctx = RunContext.from_dict(run_context(context["params"], context["run_id"]))
    error = context.get("exception")
    task = context["ti"].task_id
    record(ctx, f"task {task} failed: " + (
        f"{type(error).__name__}: {error}" if error is not None else "see its log"))


def _stage_task(stage: Stage, first: bool, after_mapped: bool) -> Any:
    """The TaskFlow task of one declared stage (a thin call of its npimage function).

    The first stage builds the run context from the params, takes the client's lock, runs
    with the DAG run's start date, and returns the context without DSN passwords (the
    XCom every later task receives; each task takes the DSNs again from the params). A
    mapped stage runs once per item; the stage after a mapped one also runs when the
    mapping was empty.
    """
    from airflow.sdk import task

    from npimage.orchestration.locks import take_client_lock

    kwargs: dict[str, Any] = {"task_id": stage.name}
    if POOLS.get(stage.name):
        kwargs["pool"] = POOLS[stage.name]
    if after_mapped:
        kwargs["trigger_rule"] = "none_failed"

    if first:
        @task(**kwargs)
        def start() -> dict[str, Any]:
            from airflow.sdk import get_current_context

            ctx = _current_context()
            take_client_lock(ctx)
            started = get_current_context()["dag_run"].start_date  # the run's real start
            _no_retry_on_input_error(stage.resolve(), _with_secrets(ctx), started_at=started)
            return _public(ctx)

        return start

    if stage.mapped:
        @task(**kwargs)
        def each(ctx: dict[str, Any], item: Any) -> Any:
            return _no_retry_on_input_error(stage.resolve(), _with_secrets(ctx), item)

        return each

    @task(**kwargs)
    def once(ctx: dict[str, Any], after: Any = None) -> Any:
        return _no_retry_on_input_error(stage.resolve(), _with_secrets(ctx))

    return once


def build_stage_tasks() -> None:
    """Inside a @dag function: one task per declared stage, in order, then release_lock
    (a teardown: it runs whatever happened before it)."""
    from airflow.sdk import teardown

    from npimage.orchestration.locks import release_client_lock

    @teardown
    def release_lock() -> bool:
        """Release the client's lock if this run holds it (not when it was refused)."""
        return release_client_lock(_current_context())

    ctx: Any = None
    outputs: dict[str, Any] = {}
    previous: Stage | None = None
    for stage in STAGES:
        task_fn = _stage_task(stage, first=previous is None,
                              after_mapped=bool(previous and previous.mapped))
        if previous is None:
            ctx = outputs[stage.name] = task_fn()
        elif stage.over is not None:
            outputs[stage.name] = task_fn.partial(ctx=ctx).expand(item=outputs[stage.over])
            if stage.over != previous.name:  # mapped over a stage before the previous one
                outputs[previous.name] >> outputs[stage.name]
        else:
            outputs[stage.name] = task_fn(ctx, after=outputs[previous.name])
        previous = stage
    assert previous is not None
    outputs[previous.name] >> release_lock()
