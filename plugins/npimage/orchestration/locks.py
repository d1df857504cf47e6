"""The client's run lock as the DAG takes it: Airflow decides whether a holder is alive.

One run per client at a time (npimage.storage.locks). The DAG's first task takes the
lock for its DAG run, and a teardown task releases it; a lock left by a DAG run that
Airflow no longer knows as queued or running is taken over.
"""

from __future__ import annotations

from typing import Any

from npimage.storage import locks
from npimage.storage.runs import RunContext


def dag_run_alive(holder: locks.Holder) -> bool:
    """Whether the DAG run holding a client's lock is still queued or running."""
    from airflow.sdk import get_current_context
    from airflow.sdk.api.client import ServerResponseError

    ti = get_current_context()["ti"]
    try:
        state = ti.get_dagrun_state(holder.dag_id or "npimage_dedup", holder.run_id)
    except ServerResponseError as exc:
        if exc.response.status_code == 404:  # Airflow has no such run: nobody will release
            return False
        raise
    return bool(state in ("queued", "running"))


def take_client_lock(ctx: dict[str, Any]) -> None:
    """Take the client's lock for this DAG run, or fail the task without retries."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    run = RunContext.from_dict(ctx)
    try:
        locks.acquire(run.client_dir, run.client_id, run.run_id, owner=locks.AIRFLOW,
                      dag_id=get_current_context()["dag"].dag_id, is_alive=dag_run_alive)
    except locks.RunInProgress as exc:
        raise AirflowFailException(str(exc)) from exc  # retrying would be refused again


def release_client_lock(ctx: dict[str, Any]) -> bool:
    """Release the client's lock if this DAG run holds it (not when it was refused)."""
    run = RunContext.from_dict(ctx)
    return locks.release(run.client_dir, run.run_id)
