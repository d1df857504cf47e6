"""A real S3-compatible server for the tests: moto's standalone server on 127.0.0.1.

`s3_server` (session) starts `moto_server` on a free port, points the standard AWS
variables at it (AWS_ENDPOINT_URL and dummy credentials: what a deployment sets for MinIO
or Ceph too) and stops it at the end. `s3_bucket` makes a fresh bucket per test.

Use from tests/conftest.py:  from s3 import s3_bucket, s3_server  # noqa: F401
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV = {"AWS_ACCESS_KEY_ID": "npimage-test", "AWS_SECRET_ACCESS_KEY": "npimage-test",
       "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server started for this session (stopped at its end)."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        pytest.skip("moto[server] is not installed (moto_server not found)")
    for _ in range(3):  # another process may take the free port first: try again
        port = _free_port()
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _wait(port, proc):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail("moto_server did not start")
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in (*ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """`s3://<bucket>`: a bucket of its own for one test."""
    import boto3

    name = f"npimage-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"
