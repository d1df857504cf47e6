"""npimage_dedup: deduplicate one client's product images, triggered per client.

One task per stage of npimage.stages.STAGES (the sequence `npimage run` follows too):
extract -> plan -> signatures (mapped over batches) -> consolidate -> compare (mapped over
catalogue shards) -> verify (close pairs in detail) -> merge (image matches + product
roll-up) -> publish -> report
-> release_lock (teardown: runs whatever happened before it)

One run per client at a time: extract takes the client's lock (npimage.storage.locks) and
refuses, without retries, while another run of the client is in flight; the teardown
releases it. Runs of different clients go ahead in parallel.

Every task is a thin call into the `npimage` library (plugins/npimage); XCom carries the
run context, file paths and counts, never data. Files are keyed by client and run id, so
a retried task rewrites its own files and a rerun of the same run gives the same tables.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task, teardown

from npimage.config import DEFAULT_FV_MODEL, Settings
from npimage.stages import STAGES, Stage

DEFAULTS = Settings()
NEXTPAGE_CONN_ID = "nextpage_backend"


def _context(params: dict) -> dict:
    """The run context (a small dict) from the DAG params and this DAG run's id."""
    from npimage.pipeline import settings_context

    run_id = get_current_context()["run_id"]
    params = {**params, "source": _conn_ref(params["source"]),
              "backend": _conn_ref(params["backend"])}
    settings = Settings().with_overrides(
        fv=bool(params["fv"]), fv_model=params["fv_model"] or None, top_k=int(params["top_k"]),
        threshold=float(params["threshold"]), weights_file=params["weights"] or None)
    ctx = settings_context(params["client_id"], params["source"], run_id, settings,
                           mode=params["mode"], backend=params["backend"] or None)
    return ctx.to_dict()


def _conn_ref(value: str) -> str:
    """`nextpage` names the Airflow connection nextpage_backend (resolved inside tasks)."""
    return f"airflow-conn:{NEXTPAGE_CONN_ID}" if value == "nextpage" else value


def _ctx(data: dict):
    from npimage.storage.runs import RunContext

    return RunContext.from_dict(data)


def _dag_run_alive(holder) -> bool:
    """Whether the DAG run holding a client's lock is still queued or running."""
    from airflow.sdk.api.client import ServerResponseError

    ti = get_current_context()["ti"]
    try:
        state = ti.get_dagrun_state(holder.dag_id or "npimage_dedup", holder.run_id)
    except ServerResponseError as exc:
        if exc.response.status_code == 404:  # Airflow has no such run: nobody will release
            return False
        raise
    return state in ("queued", "running")


def _take_client_lock(ctx: dict) -> None:
    """Take the client's lock for this DAG run, or fail the task without retries."""
    from airflow.sdk.exceptions import AirflowFailException

    from npimage.storage import locks

    run = _ctx(ctx)
    try:
        locks.acquire(run.client_dir, run.client_id, run.run_id, owner=locks.AIRFLOW,
                      dag_id=get_current_context()["dag"].dag_id, is_alive=_dag_run_alive)
    except locks.RunInProgress as exc:
        raise AirflowFailException(str(exc)) from exc  # retrying would be refused again


@dag(
    dag_id="npimage_dedup",
    schedule=None,
    catchup=False,
    max_active_tasks=4,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20)},
    tags=["npimage"],
    doc_md=__doc__,
    params={
        "client_id": Param("demo", type="string", minLength=1, description="client to process"),
        "source": Param("", type="string",
                        description="folder of images, manifest CSV, postgresql:// URL, or "
                        "'nextpage' for the Airflow connection nextpage_backend"),
        "mode": Param("full", enum=["full", "incremental"]),
        "fv": Param(DEFAULTS.fv, type="boolean", description="use feature vectors (slower)"),
        "fv_model": Param(DEFAULT_FV_MODEL, type="string",
                          description="TF Hub handle/URL, SavedModel folder or efficientnet-lite0"),
        "top_k": Param(DEFAULTS.top_k, type="integer", minimum=1, maximum=1000),
        "threshold": Param(DEFAULTS.threshold, type="number", exclusiveMinimum=0, maximum=1,
                           description="lowest score kept; pairs below 0.82 are 'weak'"),
        "weights": Param("", type="string", description="JSON weights file ('' = defaults)"),
        "backend": Param("", type="string",
                         description="load matches into: '' (none), 'nextpage' or a URL"),
    },
)
def npimage_dedup():
    @teardown
    def release_lock() -> bool:
        """Release the client's lock if this run holds it (not when it was refused)."""
        from npimage.storage import locks

        run = _ctx(_context(get_current_context()["params"]))
        return locks.release(run.client_dir, run.run_id)

    ctx = None
    outputs: dict = {}
    previous: Stage | None = None
    for stage in STAGES:
        task_fn = _stage_task(stage, first=previous is None, after_mapped=bool(
            previous and previous.mapped))
        if previous is None:
            ctx = outputs[stage.name] = task_fn()
        elif stage.mapped:
            outputs[stage.name] = task_fn.partial(ctx=ctx).expand(item=outputs[stage.over])
        else:
            outputs[stage.name] = task_fn(ctx, after=outputs[previous.name])
        previous = stage
    outputs[previous.name] >> release_lock()


def _stage_task(stage: Stage, first: bool, after_mapped: bool):
    """The TaskFlow task of one declared stage (a thin call of its npimage function).

    The first stage builds the run context from the params and takes the client's lock,
    and returns the context (the XCom every later task receives). A mapped stage runs once
    per item; the stage after a mapped one also runs when the mapping was empty.
    """
    kwargs: dict = {"task_id": stage.name}
    if stage.mapped:
        kwargs["max_active_tis_per_dag"] = 2
    if after_mapped:
        kwargs["trigger_rule"] = "none_failed"

    if first:
        @task(**kwargs)
        def start() -> dict:
            ctx = _context(get_current_context()["params"])
            _take_client_lock(ctx)
            stage.resolve()(_ctx(ctx))
            return ctx

        return start

    if stage.mapped:
        @task(**kwargs)
        def each(ctx: dict, item):
            return stage.resolve()(_ctx(ctx), item)

        return each

    @task(**kwargs)
    def once(ctx: dict, after=None):
        return stage.resolve()(_ctx(ctx))

    return once


npimage_dedup()
