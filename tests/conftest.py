"""Shared test set-up: an Airflow home per test session, demo catalogues, dataset paths.

Airflow reads AIRFLOW_HOME when first imported, so it is set here, at import time,
before any test module imports airflow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from pg import pg_backend, pg_dsn  # noqa: F401 - PostgreSQL fixtures for every test module
from s3 import s3_bucket, s3_server  # noqa: F401 - a moto S3 server for object-storage tests

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="npimage-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SESSION_TMP / "airflow_home")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("NPIMAGE_FV_THREADS", "2")

# The Ctrl-C tests send SIGINT to runs and to this process, as a terminal does. A shell
# without job control starts a background job (`make test &`, nohup, some CI runners) with
# SIGINT ignored, and children inherit that: every run would then ignore the test's Ctrl-C.
# Python's own handler here gives children the default disposition back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture(params=["local", "s3"])
def data_dir(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> str:
    """A data dir, once a local folder and once `s3://` on the moto server.

    The s3 variant shares its locks through PostgreSQL (NPIMAGE_STATE_DSN), as every
    deployment whose data dir is on an object store must.
    """
    if request.param == "local":
        return str(tmp_path / "data")
    bucket = request.getfixturevalue("s3_bucket")
    monkeypatch.setenv("NPIMAGE_STATE_DSN", request.getfixturevalue("pg_dsn"))
    return f"{bucket}/data"


@pytest.fixture(scope="module", params=["local", "s3"])
def data_root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A factory of fresh data dirs for a test module, run once local and once on s3://.

    Calling it with a name gives a new data dir: a temporary folder, or a prefix in a
    bucket of the moto server (locks shared through PostgreSQL, NPIMAGE_STATE_DSN).
    `data_root.remote` says which.
    """
    import uuid

    if request.param == "local":
        def local(name: str) -> str:
            return str(tmp_path_factory.mktemp(name))

        local.remote = False
        yield local
        return
    import boto3

    endpoint = request.getfixturevalue("s3_server")
    bucket = f"npimage-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)

    def remote(name: str) -> str:
        return f"s3://{bucket}/{name}-{uuid.uuid4().hex[:6]}"

    remote.remote = True
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPIMAGE_STATE_DSN", request.getfixturevalue("pg_dsn"))
        yield remote
