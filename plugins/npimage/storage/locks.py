"""One run at a time per client: a lock row in PostgreSQL, or a lock file on one machine.

Two runs of one client at once would race on `current.json`, on the baseline an
incremental run reads, and on the client's warehouse and backend rows. So a run takes
the client's lock before it writes anything, and a second run of the same client is
refused with an error that names the run in flight (`RunInProgress`). Runs of other
clients are never blocked: each client has its own lock.

Where the lock lives:

- `NPIMAGE_STATE_DSN` set (any data dir, required for an object-store one): a row of the
  table `npimage_lock` in that PostgreSQL database, keyed by the client folder's URL, so
  every host sees it. A process holder has a lease (`NPIMAGE_LOCK_TTL`, 60 s) that a
  heartbeat thread renews; a process that died (kill -9, a lost host) is taken over once
  its lease ran out. An Airflow holder has no lease: its tasks run on any worker, and the
  teardown task `release_lock` deletes the row from whatever host it runs on.
- otherwise (zero-config `npimage run` on one machine): the file
  `<data_dir>/clients/<client>/run.lock`, described below.

The lock file holds a JSON record of the holder (run id, owner, pid, host, since). Two
kinds of holder:

- a process (`npimage run`): it keeps an fcntl lock on the file for as long as the run
  lasts. The kernel drops that lock when the process dies, however it dies, so a record
  whose file is not locked is stale and the next run takes it over (and says so).
- an Airflow DAG run: its tasks run in separate, short processes, so the record alone
  holds the lock from extract until a teardown task releases it, whatever the outcome.
  Whether such a holder is still alive is asked of Airflow through `is_alive` (the state
  of its DAG run); without that answer the holder is assumed alive and the run refused.

Every read-decide-write of the record happens under the fcntl lock (lock file) or the
row lock of one transaction (PostgreSQL), so two runs that start at the same instant
cannot both win.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import IO, Any

from npimage.sqlfiles import load_sql
from npimage.storage.store import Location, is_remote, location

log = logging.getLogger("npimage")

LOCK_NAME = "run.lock"
PROCESS = "process"
AIRFLOW = "airflow"

#: How long to wait for another process's brief read-decide-write of the record.
BUSY_WAIT = 5.0


@dataclass(frozen=True)
class Holder:
    """Who holds a client's lock: the record stored in the lock file."""

    run_id: str
    owner: str  # PROCESS or AIRFLOW
    pid: int
    host: str
    since: str  # ISO 8601, UTC
    dag_id: str | None = None

    def describe(self) -> str:
        who = (f"Airflow DAG run of {self.dag_id}" if self.owner == AIRFLOW
               else f"process {self.pid} on {self.host}")
        return f"run {self.run_id!r} ({who}, since {self.since})"


class RunInProgress(RuntimeError):
    """A run of this client is in flight; the new run is refused, nothing was written."""

    def __init__(self, client_id: str, run_id: str, holder: Holder | None,
                 path: Path | str) -> None:
        self.client_id, self.run_id, self.holder, self.path = client_id, run_id, holder, path
        what = holder.describe() if holder else "another run (its record is being written)"
        hint = (f"; if that run is dead, remove {path}" if holder and holder.owner == AIRFLOW
                else "")
        super().__init__(f"client {client_id!r} already has a run in flight: {what}; "
                         f"run {run_id!r} refused{hint}")


def lock_path(client_dir: Path) -> Path:
    return Path(client_dir) / LOCK_NAME


def _parse(text: str) -> Holder | None:
    """The holder recorded in the lock file's text; None when empty or unreadable."""
    if not text.strip():
        return None
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None


def _file_read_holder(client_dir: Path) -> Holder | None:
    """The recorded holder of a client's lock (stale or not), or None."""
    try:
        return _parse(lock_path(client_dir).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _try_flock(fh: IO[str]) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write(fh: IO[str], holder: Holder | None) -> None:
    """Replace the record in place (the file is never unlinked: others may hold it open)."""
    fh.seek(0)
    fh.truncate()
    if holder is not None:
        fh.write(json.dumps(asdict(holder)))
    fh.flush()
    os.fsync(fh.fileno())


def _current(fh: IO[str]) -> Holder | None:
    fh.seek(0)
    return _parse(fh.read())


@dataclass
class ClientLock:
    """An acquired client lock. `took_over` names a dead holder it replaced, if any."""

    path: Path | str  # the lock file, or the shared lock's key
    holder: Holder
    took_over: Holder | None
    _fh: IO[str] | None = None  # open and fcntl-locked while a PROCESS holder runs
    _on_release: Callable[[], bool] | None = None  # a shared (PostgreSQL) lock's release

    def release(self) -> bool:
        """Release the lock if it is still ours; True when it was."""
        if self._on_release is not None:
            on_release, self._on_release = self._on_release, None
            return on_release()
        if self._fh is not None:
            try:
                mine = _current(self._fh) == self.holder
                if mine:
                    _write(self._fh, None)
            finally:
                fcntl.flock(self._fh, fcntl.LOCK_UN)
                self._fh.close()
                self._fh = None
            return mine
        return _file_release(Path(self.path).parent, self.holder.run_id)


def _open_locked(path: Path, client_id: str, run_id: str) -> IO[str]:
    """The lock file, opened and fcntl-locked, waiting out brief holders only.

    A PROCESS holder keeps the fcntl lock for its whole run: refuse at once. Anyone else
    holds it for a few milliseconds (an Airflow task writing or clearing its record).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        fh = path.open("a+", encoding="utf-8")
        if _try_flock(fh):
            return fh
        fh.close()
        holder = _file_read_holder(path.parent)
        if (holder is not None and holder.owner == PROCESS) or time.monotonic() > deadline:
            raise RunInProgress(client_id, run_id, holder, path)
        time.sleep(0.05)


def _stale(holder: Holder, is_alive: Callable[[Holder], bool] | None) -> bool:
    """Whether a recorded holder is dead (we hold the fcntl lock when this is asked)."""
    if holder.owner == PROCESS:
        return True  # its process would still hold the fcntl lock if it were running
    return is_alive is not None and not is_alive(holder)


def _file_acquire(client_dir: Path, client_id: str, run_id: str, *, owner: str = PROCESS,
            dag_id: str | None = None,
            is_alive: Callable[[Holder], bool] | None = None) -> ClientLock:
    """Take the client's lock for `run_id`, or raise RunInProgress naming the holder.

    The same run may take its own lock again (a retried Airflow task). A dead holder is
    replaced, with a warning. `owner=PROCESS` keeps the lock until `release()` or the end
    of the process; `owner=AIRFLOW` keeps it until `release(client_dir, run_id)`.
    """
    if owner not in (PROCESS, AIRFLOW):
        raise ValueError(f"owner must be {PROCESS!r} or {AIRFLOW!r}, got {owner!r}")
    path = lock_path(client_dir)
    fh = _open_locked(path, client_id, run_id)
    try:
        old = _current(fh)
        took_over = None
        if old is not None and old.run_id != run_id:
            if not _stale(old, is_alive):
                raise RunInProgress(client_id, run_id, old, path)
            log.warning("client %s: taking over the lock of %s, which is no longer running",
                        client_id, old.describe())
            took_over = old
        holder = Holder(run_id=run_id, owner=owner, pid=os.getpid(), host=socket.gethostname(),
                        since=datetime.now(UTC).isoformat(timespec="seconds"), dag_id=dag_id)
        _write(fh, holder)
    except BaseException:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
        raise
    if owner == PROCESS:
        return ClientLock(path, holder, took_over, fh)
    fcntl.flock(fh, fcntl.LOCK_UN)
    fh.close()
    return ClientLock(path, holder, took_over, None)


def _file_release(client_dir: Path, run_id: str) -> bool:
    """Clear the client's lock record if `run_id` holds it; True when it did.

    Releasing a lock held by another run does nothing, so a refused run's clean-up can
    never free the lock of the run that refused it.
    """
    path = lock_path(client_dir)
    if not path.exists():
        return False
    try:
        fh = _open_locked(path, "", run_id)
    except RunInProgress:
        return False  # a live process holds it: certainly not ours
    try:
        old = _current(fh)
        if old is None or old.run_id != run_id:
            return False
        _write(fh, None)
        return True
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _file_force_release(client_dir: Path) -> Holder | None:
    """Clear a client's lock whoever holds it (operator's tool for a dead Airflow run).

    Returns the holder that was cleared. Refused (RunInProgress) while a live process
    holds it: stop that process instead.
    """
    path = lock_path(client_dir)
    if not path.exists():
        return None
    fh = _open_locked(path, "", "force-release")
    try:
        old = _current(fh)
        _write(fh, None)
        return old
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


# -- shared locks: a row per lock in PostgreSQL (NPIMAGE_STATE_DSN) ------------------------

STATE_DSN_ENV = "NPIMAGE_STATE_DSN"
def lease_ttl() -> float:
    """Lease of a process holder of a shared lock (NPIMAGE_LOCK_TTL seconds, default 60),
    renewed every third of it by a heartbeat thread: a process that died (kill -9, a lost
    host) is taken over once its lease ran out."""
    return float(os.environ.get("NPIMAGE_LOCK_TTL", "60"))


def state_dsn() -> str | None:
    """DSN of the PostgreSQL database that holds shared locks, if one is configured."""
    return os.environ.get(STATE_DSN_ENV) or None


def _pg_connect(dsn: str) -> Any:
    import psycopg2  # only when shared locks are used

    conn = psycopg2.connect(dsn, application_name="npimage-lock", connect_timeout=10)
    conn.autocommit = False
    return conn


@cache
def _pg_schema(dsn: str) -> None:
    """Create npimage_lock once per process and database."""
    conn = _pg_connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(load_sql("postgres", "lock_schema"))
    finally:
        conn.close()


def _row_holder(row: tuple[Any, ...]) -> Holder:
    run_id, owner, pid, host, since, dag_id = row[:6]
    return Holder(run_id=run_id, owner=owner, pid=pid, host=host, since=since, dag_id=dag_id)


class _Heartbeat(threading.Thread):
    """Renews a process holder's lease until stopped; warns if the lock was taken away."""

    def __init__(self, dsn: str, params: dict[str, Any]) -> None:
        super().__init__(name=f"npimage-lock-{params['run_id']}", daemon=True)
        self.dsn, self.params, self.stop = dsn, params, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(max(self.params['ttl'] / 3, 0.1)):
            try:
                conn = _pg_connect(self.dsn)
                try:
                    with conn, conn.cursor() as cur:
                        cur.execute(load_sql("postgres", "lock_renew"), self.params)
                        ours = cur.fetchone() is not None
                finally:
                    conn.close()
                if not ours:
                    log.error("lock %s of run %s was taken over by another run",
                              self.params["lock_key"], self.params["run_id"])
                    return
            except Exception as exc:  # a blip of the database: try again next beat
                log.warning("could not renew lock %s: %s", self.params["lock_key"], exc)


def _pg_acquire(dsn: str, key: str, client_id: str, run_id: str, owner: str,
                dag_id: str | None, is_alive: Callable[[Holder], bool] | None) -> ClientLock:
    """Take a shared lock in one transaction (the row is locked while deciding)."""
    _pg_schema(dsn)
    holder = Holder(run_id=run_id, owner=owner, pid=os.getpid(), host=socket.gethostname(),
                    since=datetime.now(UTC).isoformat(timespec="seconds"), dag_id=dag_id)
    params = {"lock_key": key, **asdict(holder),
              "ttl": lease_ttl() if owner == PROCESS else None}
    took_over = None
    conn = _pg_connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(load_sql("postgres", "lock_insert"), params)
            if cur.fetchone() is None:  # held: decide under the row lock
                cur.execute(load_sql("postgres", "lock_select"), params)
                row = cur.fetchone()
                old = _row_holder(row) if row else None
                if old is not None and old.run_id != run_id:
                    dead = bool(row[6]) if old.owner == PROCESS else (
                        is_alive is not None and not is_alive(old))
                    if not dead:
                        raise RunInProgress(client_id, run_id, old, key)
                    log.warning("client %s: taking over the lock of %s, which is no longer "
                                "running", client_id, old.describe())
                    took_over = old
                cur.execute(load_sql("postgres", "lock_take" if row else "lock_insert"), params)
    finally:
        conn.close()
    if owner != PROCESS:
        return ClientLock(key, holder, took_over,
                          _on_release=lambda: _pg_release(dsn, key, run_id))
    beat = _Heartbeat(dsn, params)
    beat.start()

    def on_release() -> bool:
        beat.stop.set()
        return _pg_release(dsn, key, run_id)

    return ClientLock(key, holder, took_over, _on_release=on_release)


def _pg_one(dsn: str, name: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    _pg_schema(dsn)
    conn = _pg_connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(load_sql("postgres", name), params)
            row: tuple[Any, ...] | None = cur.fetchone()
            return row
    finally:
        conn.close()


def _pg_release(dsn: str, key: str, run_id: str) -> bool:
    return _pg_one(dsn, "lock_release", {"lock_key": key, "run_id": run_id}) is not None


# -- the API: shared locks when NPIMAGE_STATE_DSN is set, else lock files ------------------

def _key(client_dir: Location) -> str:
    """The shared lock's key of a client folder: the folder's full URL or absolute path."""
    client_dir = location(client_dir)
    return str(client_dir) if is_remote(client_dir) else str(Path(client_dir).resolve())


def _shared(client_dir: Location) -> str | None:
    """The state DSN when locks are shared; refuses an object store without one."""
    client_dir = location(client_dir)
    dsn = state_dsn()
    if dsn is None and is_remote(client_dir):
        raise RuntimeError(
            f"{client_dir} is on an object store that several hosts share: its run locks need "
            f"PostgreSQL. Set {STATE_DSN_ENV} to a database every host reaches (for example "
            "the Airflow metadata database).")
    return dsn


def acquire(client_dir: Location, client_id: str, run_id: str, *, owner: str = PROCESS,
            dag_id: str | None = None,
            is_alive: Callable[[Holder], bool] | None = None) -> ClientLock:
    """Take the client's lock for `run_id`, or raise RunInProgress naming the holder.

    The same run may take its own lock again (a retried Airflow task). A dead holder is
    replaced, with a warning. `owner=PROCESS` keeps the lock until `release()` or the end
    of the process (lock file) or of its lease (shared lock); `owner=AIRFLOW` keeps it
    until `release(client_dir, run_id)`, whichever host calls it.
    """
    if owner not in (PROCESS, AIRFLOW):
        raise ValueError(f"owner must be {PROCESS!r} or {AIRFLOW!r}, got {owner!r}")
    dsn = _shared(client_dir)
    if dsn is not None:
        return _pg_acquire(dsn, _key(client_dir), client_id, run_id, owner, dag_id, is_alive)
    return _file_acquire(Path(client_dir), client_id, run_id, owner=owner, dag_id=dag_id,
                         is_alive=is_alive)


def release(client_dir: Location, run_id: str) -> bool:
    """Clear the client's lock if `run_id` holds it; True when it did.

    Releasing a lock held by another run does nothing, so a refused run's clean-up can
    never free the lock of the run that refused it.
    """
    dsn = _shared(client_dir)
    if dsn is not None:
        return _pg_release(dsn, _key(client_dir), run_id)
    return _file_release(Path(client_dir), run_id)


def read_holder(client_dir: Location) -> Holder | None:
    """The recorded holder of a client's lock (stale or not), or None."""
    dsn = _shared(client_dir)
    if dsn is not None:
        row = _pg_one(dsn, "lock_read", {"lock_key": _key(client_dir)})
        return _row_holder(row) if row else None
    return _file_read_holder(Path(client_dir))


def force_release(client_dir: Location) -> Holder | None:
    """Clear a client's lock whoever holds it (operator's tool for a dead Airflow run).

    Returns the holder that was cleared. With lock files, refused (RunInProgress) while a
    live process holds it: stop that process instead.
    """
    dsn = _shared(client_dir)
    if dsn is not None:
        row = _pg_one(dsn, "lock_force", {"lock_key": _key(client_dir)})
        return _row_holder(row) if row else None
    return _file_force_release(Path(client_dir))


@contextmanager
def client_run_lock(client_dir: Location, client_id: str, run_id: str) -> Iterator[ClientLock]:
    """Hold the client's lock (PROCESS owner) for the duration of a `with` block."""
    lock = acquire(client_dir, client_id, run_id, owner=PROCESS)
    try:
        yield lock
    finally:
        lock.release()
