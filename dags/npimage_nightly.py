"""npimage_nightly: every night, an incremental deduplication of every active client.

list_clients reads the active clients of the NextPage backend (Airflow connection
nextpage_backend), then one npimage_dedup run is triggered per client, in incremental
mode: only the day's new and changed images are computed and compared against the
client's whole catalogue, and the match tables are loaded back into the backend.
A new client's first run is a backfill: trigger npimage_dedup with mode=full.
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task

from npimage.orchestration.connection import NEXTPAGE, NEXTPAGE_CONN_ID


@dag(
    dag_id="npimage_nightly",
    schedule="0 2 * * *",
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2},
    tags=["npimage"],
    doc_md=__doc__,
    params={"fv": Param(True, type="boolean", description="use feature vectors")},
)
def npimage_nightly():
    @task
    def list_clients(params: dict | None = None) -> list[dict]:
        """One npimage_dedup conf per active client of the backend."""
        from npimage.backend import list_clients
        from npimage.orchestration.connection import airflow_dsn

        return [{"client_id": c, "source": NEXTPAGE, "backend": NEXTPAGE,
                 "mode": "incremental", "fv": bool(params["fv"])}
                for c in list_clients(airflow_dsn(NEXTPAGE_CONN_ID))]

    TriggerDagRunOperator.partial(
        task_id="dedup_client",
        trigger_dag_id="npimage_dedup",
        trigger_run_id="nightly__{{ ds_nodash }}__{{ ti.map_index }}",
        wait_for_completion=False,
    ).expand(conf=list_clients())


npimage_nightly()
