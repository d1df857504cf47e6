"""The npimage_dedup DAG's tasks, built from the declared stages (npimage.stages.STAGES).

dags/npimage_dedup.py declares the DAG (id, params, defaults) and calls
`build_stage_tasks()`; everything else is here: the run context from the params, one
TaskFlow task per stage (mapped stages expanded over the items of the stage they map
over), the client's lock taken by the first task and released by a teardown.
"""

from __future__ import annotations

from typing import Any

from npimage.config import Settings
from npimage.orchestration.connection import conn_ref
from npimage.stages import STAGES, Stage

#: DAG tasks of one mapped stage running at once (per DAG).
MAPPED_ACTIVE_TASKS = 2


def run_context(params: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The run context (a small dict for XCom) from the DAG params and the DAG run's id.

    Settings are read here, once, and travel in the context to every task.
    """
    from npimage.pipeline import settings_context

    source, backend = conn_ref(params["source"]), conn_ref(params["backend"])
    settings = Settings().with_overrides(
        fv=bool(params["fv"]), fv_model=params["fv_model"] or None, top_k=int(params["top_k"]),
        threshold=float(params["threshold"]), weights_file=params["weights"] or None,
        families=bool(params.get("families", True)))
    ctx = settings_context(params["client_id"], source, run_id, settings,
                           mode=params["mode"], backend=backend or None)
    return ctx.to_dict()


def _current_context() -> dict[str, Any]:
    from airflow.sdk import get_current_context

    context = get_current_context()
    return run_context(context["params"], context["run_id"])


def _stage_task(stage: Stage, first: bool, after_mapped: bool) -> Any:
    """The TaskFlow task of one declared stage (a thin call of its npimage function).

    The first stage builds the run context from the params, takes the client's lock and
    returns the context (the XCom every later task receives). A mapped stage runs once per
    item; the stage after a mapped one also runs when the mapping was empty.
    """
    from airflow.sdk import task

    from npimage.orchestration.locks import take_client_lock
    from npimage.storage.runs import RunContext

    kwargs: dict[str, Any] = {"task_id": stage.name}
    if stage.mapped:
        kwargs["max_active_tis_per_dag"] = MAPPED_ACTIVE_TASKS
    if after_mapped:
        kwargs["trigger_rule"] = "none_failed"

    if first:
        @task(**kwargs)
        def start() -> dict[str, Any]:
            ctx = _current_context()
            take_client_lock(ctx)
            stage.resolve()(RunContext.from_dict(ctx))
            return ctx

        return start

    if stage.mapped:
        @task(**kwargs)
        def each(ctx: dict[str, Any], item: Any) -> Any:
            return stage.resolve()(RunContext.from_dict(ctx), item)

        return each

    @task(**kwargs)
    def once(ctx: dict[str, Any], after: Any = None) -> Any:
        return stage.resolve()(RunContext.from_dict(ctx))

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
        else:
            outputs[stage.name] = task_fn(ctx, after=outputs[previous.name])
        previous = stage
    assert previous is not None
    outputs[previous.name] >> release_lock()
