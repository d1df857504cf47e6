"""npimage_dedup: deduplicate one client's product images, triggered per client.

One task per stage of npimage.stages.STAGES (the sequence `npimage run` follows too):
extract -> plan -> signatures (mapped over batches) -> consolidate -> compare (mapped over
catalogue shards) -> verify (close pairs in detail) -> merge (image matches + product
roll-up) -> families -> publish -> report, with the pack readers: codes read by each signature
task from its decode, and plan_text -> read_text (OCR, mapped, after families)
-> release_lock (teardown: runs whatever happened before it)

One run per client at a time: extract takes the client's lock (npimage.storage.locks) and
refuses, without retries, while another run of the client is in flight; the teardown
releases it. Runs of different clients go ahead in parallel.

The tasks are built by npimage.orchestration.dag from the declared stages; each is a thin
call into the `npimage` library (plugins/npimage); XCom carries the
run context, file paths and counts, never data. Files are keyed by client and run id, so
a retried task rewrites its own files and a rerun of the same run gives the same tables.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag

from npimage.config import DEFAULT_FV_MODEL, Settings
from npimage.orchestration.connection import NEXTPAGE, NEXTPAGE_CONN_ID
from npimage.orchestration.dag import build_stage_tasks, record_failure

DEFAULTS = Settings()


@dag(
    dag_id="npimage_dedup",
    schedule=None,
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10),
                  "on_failure_callback": record_failure},
    tags=["npimage"],
    doc_md=__doc__,
    params={
        "client_id": Param("demo", type="string", minLength=1, description="client to process"),
        "source": Param("", type="string",
                        description="folder of images, manifest CSV, postgresql:// URL, or "
                        f"'{NEXTPAGE}' for the Airflow connection {NEXTPAGE_CONN_ID}"),
        "mode": Param("full", enum=["full", "incremental"]),
        "fv": Param(DEFAULTS.fv, type="boolean", description="use feature vectors (slower)"),
        "fv_model": Param(DEFAULT_FV_MODEL, type="string",
                          description="TF Hub handle/URL, SavedModel folder or efficientnet-lite0"),
        "top_k": Param(DEFAULTS.top_k, type="integer", minimum=1, maximum=1000),
        "threshold": Param(DEFAULTS.threshold, type="number", exclusiveMinimum=0, maximum=1,
                           description="lowest score kept; pairs below 0.82 are 'weak'"),
        "weights": Param("", type="string", description="JSON weights file ('' = defaults)"),
        "backend": Param("", type="string",
                         description=f"load matches into: '' (none), '{NEXTPAGE}', "
                         "'env:<VARIABLE>' or a URL (its password is never stored)"),
        "allow_shrink": Param(False, type="boolean",
                              description="publish even if most published images disappeared"),
        "max_shrink": Param(0.5, type="number", minimum=0, maximum=1,
                            description="largest share of the published images that may "
                            "disappear or become unreadable"),
        "read": Param(DEFAULTS.read, type="string",
                      description="pack readers: codes, text (OCR of images in close pairs), "
                      "text-all, comma-separated, or none"),
        "text_max": Param(DEFAULTS.text_max, type="integer", minimum=0,
                          description="OCR at most this many images per run (0 = no cap)"),
        "families": Param(DEFAULTS.families, type="boolean",
                          description="predict product families (when families are known "
                                      "and fv is on) and flag possibly misfiled products"),
    },
)
def npimage_dedup():
    build_stage_tasks()


npimage_dedup()
