"""Checks made before a run computes anything: can it write, can it reach its database?

A run that would fail at its end (publishing into a read-only folder, loading into a
PostgreSQL that cannot be reached) is refused at its start instead, with one clear
line (npimage.errors) rather than a traceback after every image has been computed.
`npimage run` checks before taking the client's lock; the DAG's extract task checks too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from npimage.errors import DataDirError, ServiceUnavailable
from npimage.orchestration.connection import is_backend_url, resolve_db
from npimage.storage.runs import RunContext

#: Seconds to wait for PostgreSQL to answer before the run is refused.
CONNECT_TIMEOUT = 5


def check_data_dir(data_dir: Path | str) -> None:
    """The data dir exists (or can be made) and a file can be written in it."""
    from npimage.storage.store import is_remote, location

    root = location(data_dir)
    if is_remote(root):  # an object store: write and delete a probe object
        probe_obj = root / f".npimage-write-check-{os.getpid()}"
        try:
            root.fs.pipe_file(probe_obj.path, b"")
            root.fs.rm_file(probe_obj.path)
        except Exception as exc:
            raise DataDirError(f"data dir {root} is not writable: {type(exc).__name__}: {exc}",
                               hint="check the bucket and the AWS_* variables "
                                    "(AWS_ENDPOINT_URL, credentials)") from None
        return
    path = Path(data_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".npimage-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataDirError(f"data dir {path} is not writable: {reason}",
                           hint="pass --data-dir a writable folder "
                                "(or set NPIMAGE_DATA_DIR)") from None


def where(dsn: str) -> str:
    """host:port/dbname of a DSN or URL, for messages (never the password)."""
    import psycopg2.extensions

    try:
        p = psycopg2.extensions.parse_dsn(dsn)
    except Exception:  # an unparsable DSN: say nothing of its content
        return "the given database"
    return f"{p.get('host', 'localhost')}:{p.get('port', 5432)}/{p.get('dbname', '')}"


def check_database(url: str) -> None:
    """PostgreSQL at `url` (a URL or `airflow-conn:` reference) answers a connection."""
    import psycopg2

    dsn = resolve_db(url)
    try:
        conn = psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT)
    except psycopg2.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ServiceUnavailable(f"cannot reach PostgreSQL at {where(dsn)}: {first}",
                                 hint="check the URL, and that the server is running "
                                      "and accepts connections") from None
    conn.close()


def databases(ctx: RunContext) -> list[str]:
    """The PostgreSQL databases a run reads from or loads into."""
    urls = [u for u in (ctx.source, ctx.backend) if u and is_backend_url(u)]
    return list(dict.fromkeys(urls))


def check_run(ctx: RunContext, data_dir: bool = True) -> None:
    """Everything a run needs from its environment, before it computes anything."""
    if data_dir:
        check_data_dir(ctx.data_dir)
    for url in databases(ctx):
        check_database(url)
