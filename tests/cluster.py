"""A real Airflow 3 CeleryExecutor deployment on 127.0.0.1, for tests and benchmarks.

`Cluster` starts, from this venv, an api-server, a scheduler, a dag-processor and N Celery
workers (`airflow celery worker`), with:

- a PostgreSQL metadata database created for the cluster on the machine's server
  (NPIMAGE_PG_URL) and dropped by `stop()`;
- Redis from the machine (NPIMAGE_REDIS_URL, default redis://127.0.0.1:6379/13) as the
  Celery broker, under a key prefix and a queue name of its own, deleted by `stop()`;
- ports found free at run time; every server on 127.0.0.1;
- each worker in its own working directory, AIRFLOW_HOME, TMPDIR and scratch folder, as
  if on its own host, reporting its own hostname on its task instances
  (`[core] hostname_callable` = `cluster.worker_hostname`);
- the pools of the deployment (include/pools.json, resized by the caller) and the heartbeat
  timeout given, set through the environment as a deployment would.

Every process runs in a process group of its own; `stop()` ends each group (SIGTERM, then
SIGKILL) and checks that none is left. Waits are generous but bounded, and every failure
message carries the tail of each process's log.

Used by tests/test_celery_cluster.py and bench/scale.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_URL = os.environ.get("NPIMAGE_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("NPIMAGE_REDIS_URL", "redis://127.0.0.1:6379/13")
POOLS_FILE = ROOT / "include" / "pools.json"
HOSTNAME_ENV = "NPIMAGE_CLUSTER_HOSTNAME"


def worker_hostname() -> str:
    """The hostname a process reports to Airflow: its cluster name, else the machine's FQDN.

    Named by `[core] hostname_callable`, so it must stay importable without side effects.
    """
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bound to port 0, then released)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ClusterError(AssertionError):
    """A cluster step failed or timed out; the message ends with each process's log tail."""


@dataclass
class Proc:
    """One started process: its name, Popen handle, log file and environment."""

    name: str
    popen: subprocess.Popen
    log: Path
    kind: str
    killed: bool = False  # by kill(): its exit is expected

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            text = [f"(no log: {exc})"]
        return "\n".join(f"    {line}" for line in text)

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Cluster:
    """An Airflow CeleryExecutor deployment under `root` (see module docstring)."""

    root: Path
    n_workers: int = 2
    data_dir: str | None = None
    concurrency: int = 2
    pools: dict[str, int] = field(default_factory=dict)
    heartbeat_timeout: int = 30
    extra_env: dict[str, str] = field(default_factory=dict)
    worker_env: Callable[[str, Path], dict[str, str]] | None = None
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.db_name = f"npimage_airflow_{self.tag}"
        self.queue = f"npimage_{self.tag}"
        self.key_prefix = f"npimage_cluster_{self.tag}:"
        self.api_port = free_port()
        self.data_dir = self.data_dir or str(self.root / "data")
        self._db_created = False
        self._started = False

    # ------------------------------------------------------------------ environment
    @property
    def db_url(self) -> str:
        base, _, _ = PG_URL.rpartition("/")
        return f"{base}/{self.db_name}"

    def env(self, home: Path) -> dict[str, str]:
        """The environment of every Airflow process: the deployment's settings."""
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("AIRFLOW", "NPIMAGE_", "PYTHONPATH"))}
        sa_url = self.db_url.replace("postgresql://", "postgresql+psycopg2://", 1)
        env = {
            **base,
            "AIRFLOW_HOME": str(home),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "tests")]),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": self._fernet_key(),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "cluster.worker_hostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL":
                f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sa_url,
            "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.db_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": self.key_prefix,
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.root / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # The deployment's failure detection (docs/SCALE.md): a dead worker's task is
            # noticed after the heartbeat timeout, a lost queued message after the queued one.
            # Heartbeats at least 6 times per timeout, so a busy machine does not miss one.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(max(1, self.heartbeat_timeout // 6)),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": str(max(60, 2 * self.heartbeat_timeout)),
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "NPIMAGE_DATA_DIR": str(self.data_dir),
            "NPIMAGE_FV_THREADS": "1",
            **self.extra_env,
        }
        return env

    def _secret(self, what: str) -> str:
        return f"{what}-{self.tag}-{uuid.uuid5(uuid.NAMESPACE_URL, self.tag + what).hex}"

    def _fernet_key(self) -> str:
        if not hasattr(self, "_fernet"):
            from cryptography.fernet import Fernet

            self._fernet = Fernet.generate_key().decode()
        return self._fernet

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 240) -> Cluster:
        """Create the metadata DB, migrate it, create the pools, start every process."""
        self._started = True
        self._create_db()
        home = self.root / "airflow_home"
        home.mkdir(exist_ok=True)
        self.run_cli(["db", "migrate"], timeout=timeout)
        self._import_pools(home)
        self.spawn("api-server", ["api-server", "--workers", "1"], home, kind="api")
        self.spawn("scheduler", ["scheduler"], home, kind="scheduler")
        self.spawn("dag-processor", ["dag-processor"], home, kind="dag-processor")
        for i in range(1, self.n_workers + 1):
            self.start_worker(f"worker{i}")
        self.wait_ready(timeout=timeout)
        return self

    def start_worker(self, name: str) -> Proc:
        """A Celery worker in its own folder, as on its own host, serving the cluster's queue."""
        wdir = self.root / name
        for sub in ("home", "scratch", "tmp"):
            (wdir / sub).mkdir(parents=True, exist_ok=True)
        extra = {HOSTNAME_ENV: name, "TMPDIR": str(wdir / "tmp"),
                 "NPIMAGE_SCRATCH_DIR": str(wdir / "scratch"),
                 "NPIMAGE_MODEL_CACHE": str(wdir / "scratch" / "models")}
        if self.worker_env:
            extra.update(self.worker_env(name, wdir))
        args = ["celery", "worker", "--celery-hostname", f"{name}@{self.tag}", "--queues",
                self.queue, "--concurrency", str(self.concurrency), "--skip-serve-logs",
                "--without-gossip", "--without-mingle"]
        return self.spawn(name, args, wdir / "home", kind="worker", cwd=wdir, extra=extra)

    def spawn(self, name: str, args: list[str], home: Path, kind: str, cwd: Path | None = None,
              extra: dict[str, str] | None = None) -> Proc:
        """Start `airflow <args>` in a new process group, its output in <root>/<name>.log."""
        log = self.root / f"{name}.log"
        env = {**self.env(home), **(extra or {})}
        with log.open("ab") as fh:
            popen = subprocess.Popen([str(BIN / "airflow"), *args], env=env,
                                     cwd=str(cwd or self.root), stdout=fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log, kind)
        self.procs.append(proc)
        return proc

    def run_cli(self, args: list[str], timeout: float = 120) -> str:
        """Run `airflow <args>` to completion with the cluster's settings; its output."""
        home = self.root / "airflow_home"
        home.mkdir(exist_ok=True)
        try:
            out = subprocess.run([str(BIN / "airflow"), *args], env=self.env(home),
                                 cwd=str(self.root), capture_output=True, text=True,
                                 timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise self.error(f"`airflow {' '.join(args)}` took over {timeout:.0f} s") from exc
        if out.returncode:
            raise self.error(f"`airflow {' '.join(args)}` failed ({out.returncode}):\n"
                             f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        return out.stdout

    def _import_pools(self, home: Path) -> None:
        """The deployment's pools: include/pools.json, with the sizes this cluster asks for."""
        pools = json.loads(POOLS_FILE.read_text())
        for name, slots in self.pools.items():
            pools.setdefault(name, {"description": "", "include_deferred": False})
            pools[name]["slots"] = slots
        path = self.root / "pools.json"
        path.write_text(json.dumps(pools, indent=2))
        self.run_cli(["pools", "import", str(path)])

    def wait_ready(self, timeout: float = 240) -> None:
        """Until the DAGs are parsed and unpaused and every worker says it is ready."""
        def ready() -> bool:
            self.check_alive()
            workers = [p for p in self.procs if p.kind == "worker" and p.alive()]
            up = all(" ready." in p.log.read_text(errors="replace") for p in workers)
            return up and bool(self.query(
                "SELECT 1 FROM dag d JOIN serialized_dag s USING (dag_id) "
                "WHERE d.dag_id = 'npimage_dedup' AND NOT d.is_paused"))

        self.wait(ready, timeout, "the cluster to be ready (DAG parsed, workers ready)")

    def check_alive(self) -> None:
        """Fail with the logs when a process that should run has exited."""
        dead = [p for p in self.procs if not p.alive() and not p.killed]
        if dead:
            raise self.error("exited: " + ", ".join(
                f"{p.name} (code {p.popen.returncode})" for p in dead))

    def kill(self, name: str) -> None:
        """kill -9 a process and everything it started (its process group): a host dying."""
        proc = next(p for p in self.procs if p.name == name)
        with suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.killed = True
        proc.popen.wait(timeout=30)

    def stop(self) -> list[str]:
        """Stop every process group, drop the database, delete the broker keys.

        Returns the names of processes still alive afterwards (none, normally).
        """
        for proc in self.procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs:
            with suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:  # groups, too: a task process outliving its worker
            with suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)
        time.sleep(0.5)
        left = [p.name for p in self.procs if _group_alive(p.popen.pid)]
        self._drop_db()
        self._delete_broker_keys()
        return left

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ metadata DB
    def _admin(self):
        import psycopg2

        conn = psycopg2.connect(PG_URL, connect_timeout=10)
        conn.autocommit = True
        return conn

    def _create_db(self) -> None:
        with closing(self._admin()) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.db_name}"')
        self._db_created = True

    def _drop_db(self) -> None:
        if not self._db_created:
            return
        with closing(self._admin()) as conn, conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        self._db_created = False

    def _delete_broker_keys(self) -> None:
        import redis

        with closing(redis.Redis.from_url(REDIS_URL, socket_timeout=10)) as r:
            keys = list(r.scan_iter(match=f"{self.key_prefix}*", count=500))
            keys += list(r.scan_iter(match=f"*{self.queue}*", count=500))
            if keys:
                r.delete(*keys)

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of a query on the metadata database (read-only use)."""
        import psycopg2

        with closing(psycopg2.connect(self.db_url, connect_timeout=10)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else []

    # ------------------------------------------------------------------ DAG runs
    def trigger(self, dag_id: str, conf: dict, run_id: str | None = None) -> str:
        """Trigger a DAG run with `conf` through the CLI; its run id."""
        run_id = run_id or f"manual__{uuid.uuid4().hex[:12]}"
        self.run_cli(["dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf)])
        return run_id

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s",
                          (dag_id, run_id))
        return rows[0][0] if rows else None

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Task instances of a run (current try): task_id, map_index, state, hostname, try."""
        rows = self.query(
            "SELECT task_id, map_index, state, hostname, try_number FROM task_instance "
            "WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index", (dag_id, run_id))
        return [dict(zip(("task_id", "map_index", "state", "hostname", "try_number"), r,
                         strict=True)) for r in rows]

    def hostnames(self, dag_id: str, run_id: str) -> set[str]:
        """Every hostname that ran a try of a task of the run (history included)."""
        rows = self.query(
            "SELECT hostname FROM task_instance WHERE dag_id = %s AND run_id = %s "
            "UNION SELECT hostname FROM task_instance_history WHERE dag_id = %s AND run_id = %s",
            (dag_id, run_id, dag_id, run_id))
        return {r[0] for r in rows if r[0]}

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        """Until the run is finished; its final state (fails with the logs on timeout)."""
        def done() -> str | None:
            self.check_alive()
            state = self.run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return self.wait(done, timeout, f"run {run_id} of {dag_id} to finish",
                         lambda: self.describe_run(dag_id, run_id))

    def describe_run(self, dag_id: str, run_id: str) -> str:
        tis = self.task_instances(dag_id, run_id)
        return f"run state: {self.run_state(dag_id, run_id)}\n" + "\n".join(
            f"  {t['task_id']}[{t['map_index']}] {t['state']} on {t['hostname']} "
            f"try {t['try_number']}" for t in tis)

    def wait(self, check: Callable[[], object], timeout: float, what: str,
             describe: Callable[[], str] | None = None, every: float = 0.5):
        """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                detail = describe() if describe else ""
                raise self.error(f"timed out after {timeout:.0f} s waiting for {what}\n{detail}")
            time.sleep(every)

    def error(self, message: str) -> ClusterError:
        """A ClusterError whose message ends with the tail of every process's log."""
        tails = "\n".join(f"--- {p.name} ({'alive' if p.alive() else 'exited'}) {p.log}\n"
                          f"{p.tail()}" for p in self.procs)
        return ClusterError(f"{message}\n{tails}")


def _group_alive(pgid: int) -> bool:
    """Whether any process of the process group is still alive (zombies aside)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    out = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True)
    rows = (line.split() for line in out.stdout.splitlines())
    return any(r[0] == str(pgid) and not r[1].startswith("Z") for r in rows if len(r) == 2)
