"""docker-compose.yml cannot run here (no Docker engine): check what it promises instead."""

from __future__ import annotations

import yaml
from conftest import ROOT


def test_compose_file_is_complete():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"airflow-db", "nextpage-db", "airflow-init", "airflow-apiserver",
            "airflow-scheduler", "airflow-dag-processor"} <= set(services)
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"):
        svc = services[name]
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW_CONN_NEXTPAGE_BACKEND"].startswith("postgresql://")
        assert svc["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        mounts = {m.split(":")[1] for m in svc["volumes"]}
        assert {"/opt/npimage/dags", "/opt/npimage/plugins"} <= mounts
    dockerfile = ROOT / services["airflow-init"]["build"]["dockerfile"]
    assert dockerfile.is_file()
    assert "constraints.txt" in dockerfile.read_text()
    for local in ("dags", "plugins", "plugins/npimage/sql"):
        assert (ROOT / local).is_dir()
