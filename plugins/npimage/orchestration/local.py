"""Run the npimage_dedup DAG locally for real (`npimage demo --airflow`).

`airflow dags test` with a SQLite metadata database in the project's airflow_home: the
real DAG, its tasks and XCom, without a scheduler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def airflow_env(project: Path, data_dir: Path) -> dict[str, str]:
    """The environment of the `airflow` commands: this project's DAGs, plugins, data dir."""
    from npimage.storage.store import is_remote

    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(project / "airflow_home"))
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(project / "dags")
    env["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(project / "plugins")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env["NPIMAGE_DATA_DIR"] = str(data_dir if is_remote(data_dir) else data_dir.resolve())
    return env


def run_dag(conf: dict[str, Any], data_dir: Path) -> None:
    """Run the npimage_dedup DAG for real with `airflow dags test` (SQLite metadata)."""
    project = Path(__file__).resolve().parents[3]
    env = airflow_env(project, data_dir)
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([airflow, "dags", "test", "npimage_dedup", "--conf", json.dumps(conf)],
                   env=env, check=True)
