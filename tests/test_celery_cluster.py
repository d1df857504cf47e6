"""npimage_dedup on a real Airflow 3 CeleryExecutor cluster: two workers, then one killed.

The cluster (tests/cluster.py) runs scheduler, api-server, dag-processor and two Celery
workers from this venv, with the machine's Redis as broker and PostgreSQL as metadata DB
(and for npimage's client locks, NPIMAGE_STATE_DSN). The data dir and the catalogue are on
a moto S3 server (tests/s3.py): no task reads another task's local disk.
One undisturbed run must succeed with tasks on both workers and find the planted
duplicates; a second run, whose worker is killed with SIGKILL (its whole process group:
a host dying) while it computes signatures, must succeed within 2 minutes of the kill
with the same tables as the undisturbed run.
"""

from __future__ import annotations

import os
import time
from contextlib import closing

import pytest
from cluster import PG_URL, REDIS_URL, Cluster
from helpers import check_published_run, table_rows

pytestmark = [pytest.mark.cluster, pytest.mark.postgres, pytest.mark.dag]

DAG = "npimage_dedup"
TABLES = ("images", "signatures", "rejects", "image_matches", "product_matches")
#: Seconds a run may take on a loaded 2-core machine (normally ~1 minute).
RUN_TIMEOUT = 300
#: The issue's bound: a run whose worker died succeeds within this many seconds of the kill.
AFTER_KILL = 120


def _reachable_or_skip() -> None:
    """Skip (fail on CI) when the machine's Redis or PostgreSQL cannot be reached."""
    import psycopg2
    import redis

    try:
        with closing(redis.Redis.from_url(REDIS_URL, socket_timeout=5)) as r:
            r.ping()
        psycopg2.connect(PG_URL, connect_timeout=5).close()
    except (redis.RedisError, psycopg2.OperationalError) as exc:
        reason = f"Redis ({REDIS_URL}) or PostgreSQL ({PG_URL}) not reachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def bucket(s3_server):
    """A bucket of the session's moto server for the cluster's data dir and catalogue."""
    import uuid

    import boto3

    name = f"npimage-cluster-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, bucket):
    _reachable_or_skip()
    root = tmp_path_factory.mktemp("cluster")
    c = Cluster(root, n_workers=2, concurrency=2, heartbeat_timeout=15,
                data_dir=f"{bucket}/data",
                pools={"npimage_signatures": 4, "npimage_compare": 4},
                extra_env={"NPIMAGE_FV": "0", "NPIMAGE_BATCH_SIZE": "6",
                           "NPIMAGE_SHARD_SIZE": "60"})
    c.extra_env["NPIMAGE_STATE_DSN"] = c.db_url  # shared client locks, as docs/SCALE.md says
    try:
        c.start()
        yield c
    finally:
        left = c.stop()
        assert not left, f"processes left running after stop(): {left}"


@pytest.fixture(scope="module")
def source(bucket, small_demo) -> str:
    """The demo catalogue uploaded to the bucket: its manifest's s3:// URL."""
    from npimage.storage.store import location, upload_tree

    upload_tree(small_demo.manifest.parent, location(f"{bucket}/catalogue"))
    return f"{bucket}/catalogue/{small_demo.manifest.name}"


def _warehouse(c: Cluster, client: str) -> dict[str, list]:
    """The client's published tables without run- and client-specific columns."""
    wh = c.data_dir
    drop = ("run_id", "client_id")
    out = {t: table_rows(wh, t, client, drop) for t in TABLES if t != "signatures"}
    out["signatures"] = table_rows(wh, "signatures", client, (*drop, "computed_at"))
    return out


@pytest.fixture(scope="module")
def calm_run(cluster, source):
    run_id = cluster.trigger(DAG, {"client_id": "calm", "source": source,
                                   "fv": False})
    state = cluster.wait_run(DAG, run_id, RUN_TIMEOUT)
    return run_id, state


def test_run_spreads_over_both_workers_and_finds_planted_duplicates(cluster, calm_run,
                                                                     small_demo):
    run_id, state = calm_run
    assert state == "success", cluster.error(cluster.describe_run(DAG, run_id))
    hosts = cluster.hostnames(DAG, run_id)
    assert hosts == {"worker1", "worker2"}, cluster.describe_run(DAG, run_id)
    n_batches = sum(t["task_id"] == "signatures" for t in cluster.task_instances(DAG, run_id))
    assert n_batches >= 4, "the catalogue should make several signature batches"
    result = check_published_run(cluster.data_dir, "calm", small_demo.truth)
    assert result["missed"] == 0, result["missed_rows"]


def test_worker_killed_during_signatures_run_recovers_with_identical_tables(cluster, calm_run,
                                                                          source):
    assert calm_run[1] == "success"
    run_id = cluster.trigger(DAG, {"client_id": "storm", "source": source,
                                   "fv": False})

    def running_signature_host() -> str | None:
        """The host of a running signatures task once a few batches are done (mid-stage)."""
        cluster.check_alive()
        sigs = [t for t in cluster.task_instances(DAG, run_id) if t["task_id"] == "signatures"]
        if sum(t["state"] == "success" for t in sigs) < 5:
            return None
        return next((t["hostname"] for t in sigs if t["state"] == "running" and t["hostname"]),
                    None)

    victim = cluster.wait(running_signature_host, RUN_TIMEOUT,
                          "a running signatures task after 5 done",
                          lambda: cluster.describe_run(DAG, run_id), every=0.2)
    cluster.kill(victim)
    killed_at = time.monotonic()
    state = cluster.wait_run(DAG, run_id, AFTER_KILL + 120)
    took = time.monotonic() - killed_at
    detail = cluster.describe_run(DAG, run_id)
    assert state == "success", cluster.error(detail)
    assert took <= AFTER_KILL, f"run finished {took:.0f} s after the kill of {victim}\n{detail}"
    retried = [t for t in cluster.task_instances(DAG, run_id) if t["try_number"] > 1]
    assert retried, f"no task was retried after {victim} died\n{detail}"
    assert _warehouse(cluster, "storm") == _warehouse(cluster, "calm")
