"""Shared test set-up: an Airflow home per test session, demo catalogues, dataset paths.

Airflow reads AIRFLOW_HOME when first imported, so it is set here, at import time,
before any test module imports airflow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from pg import pg_backend, pg_dsn  # noqa: F401 - PostgreSQL fixtures for every test module

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="npimage-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SESSION_TMP / "airflow_home")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("NPIMAGE_FV_THREADS", "2")


def dataset(*parts: str) -> Path:
    """Path under ../shared/datasets, or skip the test with a clear message."""
    path = DATASETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"dataset not available: {path} (../shared/datasets is absent on this machine)")
    return path


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) for dag.test()."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory):
    """A small demo catalogue with planted duplicates (built once per session)."""
    from npimage_demo.catalogue import build_demo_catalogue

    return build_demo_catalogue(tmp_path_factory.mktemp("demo"), n_products=30, seed=7)
