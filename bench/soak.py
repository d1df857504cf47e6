"""Soak: parallel clients publishing round after round, a reader, and runs killed mid-way.

Each round starts one real run (`npimage.runner.run_pipeline`, hashes only, with the
PostgreSQL backend as load target) per client at the same moment, each in its own
long-lived worker process; the catalogue of every client changes between rounds (a random
80-100 % of a demo catalogue), so each publish really replaces rows. In some rounds one
run, picked at random, is killed with SIGKILL after a random delay (anywhere from extract
to the publish itself); its worker is started again for the next round. All the while a
thread of this process opens the warehouse and queries every client in a loop.

After every round it checks, for every client:
- rows lost: the published run's rows in the warehouse (images, image_matches,
  product_matches) against the counts recorded for that run; any shortfall is lost rows;
- warehouse == backend: the backend's npimage_image_match rows of the client are the
  warehouse's (same pairs, same run), and its last successful run is the published one;
- the reader: snapshots taken, errors, and snapshots where a client mixed two runs.

    .venv/bin/python bench/soak.py                          # 5 clients, 20 rounds, local
    .venv/bin/python bench/soak.py --clients 3 --rounds 5 --s3   # on a moto S3 server

Needs PostgreSQL (NPIMAGE_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres):
it creates a database for the run and drops it at the end. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

#: Lease of a run's shared lock (s3 mode): a killed run blocks its client this long.
LEASE = 3

PG_URL = os.environ.get("NPIMAGE_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


# -- worker processes ----------------------------------------------------------------------

def _worker(conn: Any, env: dict[str, str]) -> None:
    """Run the pipelines the parent sends, one at a time; answer ok/fail for each."""
    os.environ.update(env)
    from npimage.config import Settings
    from npimage.pipeline import settings_context
    from npimage.runner import run_pipeline

    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            settings = Settings().with_overrides(data_dir=job["data_dir"], fv=False)
            ctx = settings_context(job["client"], job["source"], job["run_id"], settings,
                                   backend=job["backend"])
            info = run_pipeline(ctx, workers=1, report=False)
            conn.send(("ok", info["run_id"]))
        except Exception as exc:  # reported to the parent, which counts failures
            conn.send(("fail", f"{type(exc).__name__}: {exc}"))


class Worker:
    """A long-lived process running one client's runs (killed and restarted at will)."""

    def __init__(self, ctx: Any, env: dict[str, str]) -> None:
        self.ctx, self.env = ctx, env
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.env), daemon=True)
        self.proc.start()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join()
        self.start()


# -- checks --------------------------------------------------------------------------------

def _reader(data_dir: str, stop: threading.Event, stats: dict[str, int]) -> None:
    """Query every client of the warehouse in a loop; count snapshots, errors, mixes."""
    from npimage.storage.warehouse import connect

    query = """SELECT client_id, count(DISTINCT run_id) FROM (
        SELECT client_id, run_id FROM images UNION ALL
        SELECT client_id, run_id FROM image_matches UNION ALL
        SELECT client_id, run_id FROM product_matches) GROUP BY client_id"""
    while not stop.is_set():
        try:
            con = connect(data_dir)
            try:
                rows = con.execute(query).fetchall()
            finally:
                con.close()
            stats["snapshots"] += 1
            stats["mixed"] += sum(1 for _, n in rows if n > 1)
        except FileNotFoundError:
            time.sleep(0.05)  # nothing published yet
        except Exception as exc:
            stats["errors"] += 1
            stats["last_error"] = f"{type(exc).__name__}: {exc}"
        time.sleep(0.02)


def _check(data_dir: str, dsn: str, clients: list[str]) -> dict[str, Any]:
    """Rows lost and warehouse/backend agreement, for every client that has published."""
    import psycopg2

    from npimage.storage.layout import Layout
    from npimage.storage.warehouse import connect

    layout = Layout.of(data_dir)
    con = connect(data_dir)
    pg = psycopg2.connect(dsn)
    lost, mismatched = 0, []
    try:
        for client in clients:
            ref = layout.read_pointer(client)
            if ref is None:
                continue
            run = ref["run_id"]
            rec = con.execute("SELECT n_images, n_image_matches, n_product_matches FROM runs "
                              "WHERE client_id = $c AND run_id = $r", {"c": client, "r": run}
                              ).fetchone()
            have = [con.execute(f"SELECT count(*) FROM {t} WHERE client_id = $c AND "
                                "run_id = $r", {"c": client, "r": run}).fetchone()[0]
                    for t in ("images", "image_matches", "product_matches")]
            lost += sum(max(0, want - got) for want, got in zip(rec, have, strict=True))
            wh = set(con.execute("SELECT image_id, match_image_id, band, run_id FROM "
                                 "image_matches WHERE client_id = $c", {"c": client}
                                 ).fetchall())
            with pg.cursor() as cur:
                cur.execute("SELECT image_id, match_image_id, band, run_id FROM "
                            "npimage_image_match WHERE client_id = %s", (client,))
                be = set(cur.fetchall())
                cur.execute("SELECT run_id FROM npimage_run WHERE client_id = %s AND "
                            "status = 'success' ORDER BY finished_at DESC LIMIT 1", (client,))
                last = cur.fetchone()
            if wh != be or (last and last[0] != run):
                mismatched.append(client)
    finally:
        con.close()
        pg.close()
    return {"lost": lost, "mismatched": mismatched}


# -- set-up --------------------------------------------------------------------------------

def _database() -> tuple[str, Any]:
    import psycopg2
    import psycopg2.extensions

    name = f"npimage_soak_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = psycopg2.connect(PG_URL)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return psycopg2.extensions.make_dsn(PG_URL, dbname=name), drop


def _moto() -> tuple[dict[str, str], Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "soak",
           "AWS_SECRET_ACCESS_KEY": "soak", "AWS_DEFAULT_REGION": "us-east-1"}

    def stop() -> None:
        proc.terminate()
        proc.wait(10)

    return env, stop


def _manifests(catalogue: Path, clients: list[str], rounds: int, seed: int
               ) -> dict[tuple[str, int], Path]:
    """Per client and round, a manifest of a random 80-100 % of the demo catalogue."""
    with (catalogue / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = random.Random(seed)
    out = {}
    for client in clients:
        for r in range(rounds):
            keep = sorted(rng.sample(range(len(rows)), k=rng.randint(len(rows) * 8 // 10,
                                                                    len(rows))))
            path = catalogue / f"manifest-{client}-{r:02d}.csv"
            with path.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows[i] for i in keep)
            out[client, r] = path
    return out


# -- main ----------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--kill-share", type=float, default=0.3,
                    help="share of rounds in which one run is killed (default 0.3)")
    ap.add_argument("--products", type=int, default=8, help="demo catalogue size")
    ap.add_argument("--s3", action="store_true", help="data dir on a moto S3 server")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from npimage_demo.catalogue import build_demo_catalogue

    work = Path(tempfile.mkdtemp(prefix="npimage-soak-"))
    dsn, drop_db = _database()
    stop_moto = None
    env = {"NPIMAGE_FV": "0", "PYTHONPATH": str(ROOT / "plugins")}
    try:
        demo = build_demo_catalogue(work / "catalogue", n_products=args.products, seed=args.seed)
        clients = [f"client-{i}" for i in range(args.clients)]
        manifests = _manifests(work / "catalogue", clients, args.rounds, args.seed)
        if args.s3:
            s3_env, stop_moto = _moto()
            env.update(s3_env)
            os.environ.update(s3_env)
            import boto3

            boto3.client("s3").create_bucket(Bucket="soak")
            data_dir = "s3://soak/data"
            env.update(NPIMAGE_STATE_DSN=dsn, NPIMAGE_LOCK_TTL=str(LEASE))  # shared locks
        else:
            data_dir = str(work / "data")
        os.environ.update(env)
        ctx = mp.get_context("spawn")
        workers = {c: Worker(ctx, env) for c in clients}
        rng = random.Random(args.seed)
        stats = {"snapshots": 0, "errors": 0, "mixed": 0}
        stop = threading.Event()
        reader = threading.Thread(target=_reader, args=(data_dir, stop, stats), daemon=True)
        reader.start()
        totals = {"attempted": 0, "failed": 0, "killed": 0, "lost": 0, "mismatch_rounds": 0}
        failures: list[str] = []
        t0 = time.monotonic()
        print(f"soak: {args.clients} clients x {args.rounds} rounds, {demo.n_images} demo "
              f"images (80-100 % per run), data dir {'s3://' if args.s3 else 'local'}, "
              f"kill share {args.kill_share}")
        print(f"{'round':>5} {'runs':>5} {'failed':>6} {'killed':>6} {'lost':>5} "
              f"{'wh==backend':>11} {'reader q':>9} {'reader err':>10} {'mixed':>6} {'s':>6}")
        for r in range(args.rounds):
            start = time.monotonic()
            for client, w in workers.items():
                w.conn.send({"client": client, "source": str(manifests[client, r]),
                             "run_id": f"round-{r:02d}", "data_dir": data_dir, "backend": dsn})
            victim = rng.choice(clients) if rng.random() < args.kill_share else None
            if victim:
                time.sleep(rng.uniform(0.2, 4.0))
                if not workers[victim].conn.poll():
                    workers[victim].kill()
                else:
                    victim = None  # it finished first: nothing killed this round
            failed = 0
            for client, w in workers.items():
                if client == victim:
                    continue
                status, detail = w.conn.recv()
                if status != "ok":
                    failed += 1
                    failures.append(f"round {r} {client}: {detail}")
            checked = _check(data_dir, dsn, clients)
            if victim and args.s3:  # the killed run's lease must run out before its retry
                time.sleep(LEASE + 0.5)
            attempted = len(clients) - (1 if victim else 0)
            totals["attempted"] += attempted
            totals["failed"] += failed
            totals["killed"] += 1 if victim else 0
            totals["lost"] += checked["lost"]
            totals["mismatch_rounds"] += 1 if checked["mismatched"] else 0
            print(f"{r:>5} {attempted:>5} {failed:>6} {1 if victim else 0:>6} "
                  f"{checked['lost']:>5} {'yes' if not checked['mismatched'] else 'NO':>11} "
                  f"{stats['snapshots']:>9} {stats['errors']:>10} {stats['mixed']:>6} "
                  f"{time.monotonic() - start:>6.1f}", flush=True)
        stop.set()
        reader.join(30)
        for w in workers.values():
            w.conn.send(None)
            w.proc.join(30)
        elapsed = time.monotonic() - t0
        for line in failures[:10]:
            print("  failure:", line)
        if stats.get("last_error"):
            print("  reader's last error:", stats["last_error"])
        result = {**totals, "rounds": args.rounds, "clients": args.clients, "s3": args.s3,
                  "reader_snapshots": stats["snapshots"], "reader_errors": stats["errors"],
                  "reader_mixed": stats["mixed"], "seconds": round(elapsed, 1),
                  "machine": f"{platform.machine()} {os.cpu_count()} cpu",
                  "load_1min_at_end": round(os.getloadavg()[0], 1)}
        print(f"publishes attempted {totals['attempted']}, failed {totals['failed']}, "
              f"runs killed {totals['killed']}, rows lost {totals['lost']}, rounds where "
              f"warehouse != backend {totals['mismatch_rounds']}, reader snapshots "
              f"{stats['snapshots']} (errors {stats['errors']}, mixed {stats['mixed']}), "
              f"{elapsed:.0f} s")
        print(json.dumps(result))
        ok = not (totals["failed"] or totals["lost"] or totals["mismatch_rounds"]
                  or stats["errors"] or stats["mixed"])
        return 0 if ok else 1
    finally:
        if stop_moto:
            stop_moto()
        drop_db()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
