"""docker-compose.yml: valid against the Compose specification, and the stack it promises.

The JSON schema is the Compose specification's compose-spec.json as vendored (with its
licence) by the check-jsonschema package from PyPI (a test dependency); it is not copied
into this repository. `docker compose config` runs too where the Docker CLI has the compose
plugin (skipped with the reason otherwise). No test starts the stack: the CeleryExecutor
deployment itself is exercised by tests/test_celery_cluster.py, from the venv.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources

import jsonschema
import pytest
import yaml
from conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
AIRFLOW = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
           "airflow-triggerer", "airflow-worker")
LONG_RUNNING = ("postgres", "redis", "minio", "nextpage-db", "airflow-apiserver",
                "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                "airflow-worker")


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_schema() -> dict:
    """compose-spec.json as shipped by the check-jsonschema package."""
    pkg = pytest.importorskip("check_jsonschema", reason="check-jsonschema (test extra) "
                              "ships the Compose schema: pip install -e '.[test]'")
    vendor = resources.files(pkg.__name__) / "builtin_schemas" / "vendor"
    return json.loads((vendor / "compose-spec.json").read_text())


def test_compose_file_is_valid_against_the_compose_specification(doc):
    schema = compose_schema()
    assert "compose" in schema.get("title", "").lower() or schema.get("$id") == "compose_spec.json"
    validator_cls = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_cls(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def test_schema_rejects_a_broken_compose_file(doc):
    """The validation above can fail: a misspelt key is reported."""
    schema = compose_schema()
    broken = {**doc, "services": {**doc["services"], "redis": {
        **doc["services"]["redis"], "helthcheck": {"test": ["CMD", "true"]}}}}
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def test_stack_is_a_celery_deployment_with_store_and_init(doc):
    services = doc["services"]
    assert set(AIRFLOW) | {"postgres", "redis", "minio", "minio-init", "nextpage-db"} <= set(
        services)
    for name in AIRFLOW:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert "@redis:6379/" in env["AIRFLOW__CELERY__BROKER_URL"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
        assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "false"
        assert int(env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"]) <= 120
        assert env["NPIMAGE_DATA_DIR"].startswith("s3://")
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["NPIMAGE_STATE_DSN"].startswith("postgresql://")
        mounts = {v.rsplit(":", 2)[1] if v.endswith(":ro") else v.rsplit(":", 1)[1]
                  for v in services[name]["volumes"]}
        assert {"/opt/npimage/dags", "/opt/npimage/plugins", "/opt/airflow/logs",
                "/opt/npimage/sources"} <= mounts
        assert services[name]["build"]["dockerfile"] == "include/Dockerfile"
    for name in AIRFLOW[1:]:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
    assert "mb" in services["minio-init"]["command"][0]
    init = services["airflow-init"]["command"][0]
    assert "airflow db migrate" in init
    assert "npimage_signatures" in init and "npimage_compare" in init


def test_services_have_healthchecks_and_restart_policies(doc):
    services = doc["services"]
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["restart"] == "always", name
    for name in ("airflow-init", "minio-init"):
        assert services[name]["restart"] == "no"


def test_workers_scale(doc):
    """`--scale airflow-worker=N` needs no fixed name and no host port on the worker."""
    worker = doc["services"]["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"][:3] == ["airflow", "celery", "worker"]
    assert all("container_name" not in s for s in doc["services"].values())


def test_image_has_the_celery_provider_and_the_pools():
    dockerfile = (ROOT / "include" / "Dockerfile").read_text()
    assert "constraints.txt" in dockerfile and "COPY include" in dockerfile
    assert "apache-airflow-providers-celery" in (ROOT / "pyproject.toml").read_text()
    assert "apache-airflow-providers-celery==" in (ROOT / "constraints.txt").read_text()
    pools = json.loads((ROOT / "include" / "pools.json").read_text())
    assert {"npimage_signatures", "npimage_compare"} <= set(pools)
    for local in ("dags", "plugins", "plugins/npimage/sql"):
        assert (ROOT / local).is_dir()


def test_docker_compose_config_accepts_the_file(tmp_path):
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no Docker CLI on this machine: `docker compose config` not run")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"the Docker CLI has no compose plugin: {probe.stderr.strip()[:200]}")
    (tmp_path / "sources").mkdir()
    out = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"PATH": "/usr/bin:/bin:/usr/local/bin",
                              "NPIMAGE_SOURCES": str(tmp_path / "sources")})
    assert out.returncode == 0, out.stderr
