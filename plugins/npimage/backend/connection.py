"""Connections and transactions over a DSN string or an open psycopg2 connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TypeAlias

import psycopg2
import psycopg2.extensions

Db: TypeAlias = str | psycopg2.extensions.connection
"""A DSN (libpq URI or key=value string) or an open psycopg2 connection."""

APPLICATION_NAME = "npimage"


@contextmanager
def connection(db: Db) -> Iterator[psycopg2.extensions.connection]:
    """An open connection: a new one for a DSN (closed on exit), else `db` itself (kept open).

    New connections carry application_name=npimage so that they are easy to find in
    pg_stat_activity.
    """
    if not isinstance(db, str):
        yield db
        return
    conn = psycopg2.connect(db, application_name=APPLICATION_NAME, client_encoding="UTF8")
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(conn: psycopg2.extensions.connection) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor inside one transaction: committed on success, rolled back on any error.

    The rollback is attempted even on a connection the server killed, and its own failure
    never hides the original error. A connection in autocommit mode is switched out of it
    for the transaction and back afterwards.
    """
    if conn.status != psycopg2.extensions.STATUS_READY:
        raise RuntimeError("the connection has a transaction in progress: commit it first")
    autocommit = conn.autocommit
    if autocommit:
        conn.autocommit = False
    try:
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    except BaseException:
        with suppress(psycopg2.Error):
            conn.rollback()
        raise
    finally:
        if autocommit and not conn.closed:
            with suppress(psycopg2.Error):
                conn.autocommit = True
