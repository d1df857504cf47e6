"""PostgreSQL fixtures: a fresh database per test session, dropped at the end.

NPIMAGE_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres) names the server,
and a database there to connect to while creating and dropping the test database. When
the server cannot be reached the tests that need it are skipped with the reason, or fail
when CI is set (CI must start the server).

Use from tests/conftest.py:  from pg import pg_backend, pg_dsn  # noqa: F401
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import closing

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from npimage.backend import apply_schema, create_source_schema

PG_URL = os.environ.get("NPIMAGE_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

#: Every table the backend tests write, emptied before each test that takes pg_backend.
_TABLES = ("np_client", "np_product", "np_reference", "np_image", "npimage_run",
           "npimage_image_match", "npimage_product_match", "npimage_decision",
           "npimage_family_prediction")


def pg_connect(dsn: str, autocommit: bool = True) -> psycopg2.extensions.connection:
    """A psycopg2 connection for test set-up and checks (autocommit by default)."""
    conn = psycopg2.connect(dsn, connect_timeout=10)
    conn.autocommit = autocommit
    return conn


def _admin() -> psycopg2.extensions.connection:
    try:
        return pg_connect(PG_URL)
    except psycopg2.OperationalError as exc:
        reason = f"PostgreSQL not reachable at {PG_URL} (set NPIMAGE_PG_URL): {exc}".strip()
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a database created for this test session and dropped at its end."""
    admin = _admin()
    name = f"npimage_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg2.extensions.make_dsn(PG_URL, dbname=name)
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                        .format(sql.Identifier(name)))
        admin.close()


@pytest.fixture
def pg_backend(pg_dsn: str) -> str:
    """pg_dsn with the np_* and npimage_* tables present and empty: a clean backend."""
    create_source_schema(pg_dsn)
    apply_schema(pg_dsn)
    with closing(pg_connect(pg_dsn)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in _TABLES)))
    return pg_dsn
