"""One run at a time per client: a lock file under the client's folder.

Two runs of one client at once would race on `current.json`, on the baseline an
incremental run reads, and on the client's warehouse and backend rows. So a run takes
the client's lock before it writes anything, and a second run of the same client is
refused with an error that names the run in flight (`RunInProgress`). Runs of other
clients are never blocked: each client has its own lock.

The lock is `<data_dir>/clients/<client>/run.lock`, holding a JSON record of the holder
(run id, owner, pid, host, since). Two kinds of holder:

- a process (`npimage run`): it keeps an fcntl lock on the file for as long as the run
  lasts. The kernel drops that lock when the process dies, however it dies, so a record
  whose file is not locked is stale and the next run takes it over (and says so).
- an Airflow DAG run: its tasks run in separate, short processes, so the record alone
  holds the lock from extract until a teardown task releases it, whatever the outcome.
  Whether such a holder is still alive is asked of Airflow through `is_alive` (the state
  of its DAG run); without that answer the holder is assumed alive and the run refused.

Every read-decide-write of the record happens under the fcntl lock, so two runs that
start at the same instant cannot both win. The data dir must be on a file system with
working POSIX locks (local disk, NFSv4) when several hosts share it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

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

    def __init__(self, client_id: str, run_id: str, holder: Holder | None, path: Path) -> None:
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


def read_holder(client_dir: Path) -> Holder | None:
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

    path: Path
    holder: Holder
    took_over: Holder | None
    _fh: IO[str] | None  # open and fcntl-locked while a PROCESS holder runs

    def release(self) -> bool:
        """Release the lock if it is still ours; True when it was."""
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
        return release(self.path.parent, self.holder.run_id)


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
        holder = read_holder(path.parent)
        if (holder is not None and holder.owner == PROCESS) or time.monotonic() > deadline:
            raise RunInProgress(client_id, run_id, holder, path)
        time.sleep(0.05)


def _stale(holder: Holder, is_alive: Callable[[Holder], bool] | None) -> bool:
    """Whether a recorded holder is dead (we hold the fcntl lock when this is asked)."""
    if holder.owner == PROCESS:
        return True  # its process would still hold the fcntl lock if it were running
    return is_alive is not None and not is_alive(holder)


def acquire(client_dir: Path, client_id: str, run_id: str, *, owner: str = PROCESS,
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


def release(client_dir: Path, run_id: str) -> bool:
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


def force_release(client_dir: Path) -> Holder | None:
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


@contextmanager
def client_run_lock(client_dir: Path, client_id: str, run_id: str) -> Iterator[ClientLock]:
    """Hold the client's lock (PROCESS owner) for the duration of a `with` block."""
    lock = acquire(client_dir, client_id, run_id, owner=PROCESS)
    try:
        yield lock
    finally:
        lock.release()
