"""Images/s of npimage_dedup against the number of Celery workers, on this machine.

For each worker count N it starts a real Airflow 3 CeleryExecutor cluster
(tests/cluster.py: scheduler, api-server, dag-processor, N workers with `--concurrency`
task slots each, Redis broker, PostgreSQL metadata DB), sizes the pools to the cluster
(N x concurrency slots), runs npimage_dedup once on a demo catalogue of about M images,
and reads the timings from the metadata DB: the run's wall time, and the signature phase
(first signatures task start to last end). The data dir is a local folder every worker
shares (one machine); docs/SCALE.md says how the figures extend to more hosts.

    .venv/bin/python bench/scale.py --workers 1 2 --images 400
    .venv/bin/python bench/scale.py --workers 1 2 --images 200 --fv

Prints a table; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "plugins")]

from cluster import Cluster  # noqa: E402

DAG = "npimage_dedup"


def _phase(c: Cluster, run_id: str, task_id: str) -> tuple[float, float, int]:
    """(wall seconds, summed task seconds, task count) of one task of the run."""
    row = c.query(
        "SELECT extract(epoch FROM max(end_date) - min(start_date)), sum(duration), count(*) "
        "FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = %s",
        (DAG, run_id, task_id))[0]
    return float(row[0] or 0), float(row[1] or 0), int(row[2])


def measure(n_workers: int, concurrency: int, manifest: Path, n_images: int, fv: bool,
            batch_size: int, work: Path, model_cache: Path | None) -> dict:
    """Start a cluster of `n_workers`, run the DAG once, stop; the timings."""
    slots = n_workers * concurrency
    extra = {"NPIMAGE_FV": "1" if fv else "0", "NPIMAGE_BATCH_SIZE": str(batch_size),
             "NPIMAGE_FV_THREADS": "1", "AIRFLOW__CORE__PARALLELISM": str(4 * slots)}
    worker_env = None
    if model_cache is not None:  # one converted model for all (bench only: a warm cache)
        def worker_env(name: str, wdir: Path) -> dict[str, str]:
            return {"NPIMAGE_MODEL_CACHE": str(model_cache)}

    c = Cluster(work / f"n{n_workers}", n_workers=n_workers, concurrency=concurrency,
                pools={"npimage_signatures": slots, "npimage_compare": slots},
                extra_env=extra, worker_env=worker_env)
    t0 = time.monotonic()
    try:
        c.start()
        started = time.monotonic() - t0
        run_id = c.trigger(DAG, {"client_id": f"bench{n_workers}", "source": str(manifest),
                                 "fv": fv})
        state = c.wait_run(DAG, run_id, timeout=1800)
        if state != "success":
            raise c.error(c.describe_run(DAG, run_id))
        wall = float(c.query(
            "SELECT extract(epoch FROM end_date - start_date) FROM dag_run "
            "WHERE dag_id = %s AND run_id = %s", (DAG, run_id))[0][0])
        sig_wall, sig_sum, n_batches = _phase(c, run_id, "signatures")
        hosts = sorted(c.hostnames(DAG, run_id))
    finally:
        left = c.stop()
    if left:
        raise RuntimeError(f"processes left after stop: {left}")
    return {"workers": n_workers, "slots": slots, "images": n_images, "fv": fv,
            "batches": n_batches, "run_s": round(wall, 1),
            "images_per_s": round(n_images / wall, 2),
            "signatures_s": round(sig_wall, 1), "signature_task_s": round(sig_sum, 1),
            "signature_images_per_s": round(n_images / sig_wall, 2) if sig_wall else None,
            "hosts": hosts, "cluster_start_s": round(started, 1)}


#: CPU seconds per image of the signature stage, grocery-store photos (348 px), from
#: docs/FV.md "Speed" (quietest run, 2 cores): 412 img/s FV off, 89 img/s FV on.
SIG_CPU_S = {False: 2 / 412, True: 2 / 89}
#: CPU seconds of compare, from docs/BENCHMARKS.md (shipped default weights): a 1M x 1M
#: backfill (FV off: hashes-only profile, 377 CPU s; FV on: dense, 144 CPU s at 100k x 100k
#: x 100 pairs) and a 10k-new x 1M nightly (FV on: 287 CPU s; FV off: 7.3 CPU s).
COMPARE_CPU_S = {("backfill", False): 377.0, ("backfill", True): 144.0 * 100,
                 ("nightly", False): 7.3, ("nightly", True): 287.0}
WORKLOADS = {"backfill": 1_000_000, "nightly": 10_000}


def model(workers: list[int], efficiency: float, overhead_s: float, task_s: float,
          cores: int = 2, batch_size: int = 256) -> list[dict]:
    """Modelled wall time of a 1M backfill and a 10k-new x 1M nightly on `workers` workers.

    Each worker has `cores` cores and as many task slots. Signatures: min(1024, n/batch)
    tasks of one thread each, in rounds over all slots, each costing `task_s` (Airflow's
    per-task cost, measured) plus its images' CPU, at the measured parallel `efficiency`.
    Compare: one shard per worker (NPIMAGE_SHARD_SIZE = 1M / workers; the default 200 000
    makes 5 shards, which leaves workers idle or adds a round), each task using its
    worker's `cores` threads.
    `overhead_s`: the run's serial part (extract, plan, consolidate, merge, publish, report,
    measured on a small catalogue; their O(n) work at 1M is not measured and not included).
    """
    rows = []
    for w in workers:
        slots = w * cores
        for kind, n_new in WORKLOADS.items():
            for fv in (False, True):
                tasks = min(1024, -(-n_new // batch_size))
                per_task = task_s + (n_new / tasks) * SIG_CPU_S[fv] / efficiency
                sig = -(-tasks // slots) * per_task
                cmp = task_s + COMPARE_CPU_S[(kind, fv)] / (w * cores * efficiency)
                total = overhead_s + sig + cmp
                rows.append({"workers": w, "work": kind, "fv": fv, "signatures_s": round(sig),
                             "compare_s": round(cmp), "total_s": round(total)})
    return rows


def print_model(rows: list[dict]) -> None:
    print(f"{'workers':>7} {'work':>9} {'FV':>4} {'signatures':>11} {'compare':>9} "
          f"{'total':>9}")
    for r in rows:
        print(f"{r['workers']:>7} {r['work']:>9} {'on' if r['fv'] else 'off':>4} "
              f"{_hms(r['signatures_s']):>11} {_hms(r['compare_s']):>9} {_hms(r['total_s']):>9}")


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--concurrency", type=int, default=1, help="task slots per worker")
    ap.add_argument("--images", type=int, default=400, help="about this many images")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--fv", action="store_true", help="with feature vectors (slower)")
    ap.add_argument("--model", nargs=3, type=float,
                    metavar=("EFFICIENCY", "OVERHEAD_S", "TASK_S"),
                    help="only print the model for 1, 4, 16 workers from these figures")
    args = ap.parse_args(argv)
    if args.model:
        rows = model([1, 4, 16], *args.model)
        print_model(rows)
        print(json.dumps({"bench": "scale-model", "efficiency": args.model[0],
                          "overhead_s": args.model[1], "task_s": args.model[2],
                          "rows": rows}))
        return

    from npimage_demo.catalogue import build_demo_catalogue

    work = Path(tempfile.mkdtemp(prefix="npimage-scale-"))
    demo = build_demo_catalogue(work / "demo", n_products=max(10, args.images // 2), seed=3)
    model_cache = None
    if args.fv:  # convert the model once, outside the timed runs
        from npimage.fv import load_extractor

        model_cache = work / "models"
        load_extractor("efficientnet-lite0", model_cache)
    load = os.getloadavg()[0]
    rows = [measure(n, args.concurrency, demo.manifest, demo.n_images, args.fv,
                    args.batch_size, work, model_cache) for n in args.workers]
    print(f"npimage_dedup on a CeleryExecutor cluster: {demo.n_images} images, "
          f"FV {'on' if args.fv else 'off'}, {args.concurrency} slot(s) per worker, "
          f"{os.cpu_count()} CPUs, load {load:.1f} at start")
    print(f"{'workers':>7} {'batches':>7} {'run s':>7} {'img/s':>7} {'sig s':>7} "
          f"{'sig img/s':>9} {'task s':>7}  hosts")
    for r in rows:
        print(f"{r['workers']:>7} {r['batches']:>7} {r['run_s']:>7} {r['images_per_s']:>7} "
              f"{r['signatures_s']:>7} {r['signature_images_per_s']!s:>9} "
              f"{r['signature_task_s']:>7}  {','.join(r['hosts'])}")
    print(json.dumps({"bench": "scale", "load_at_start": round(load, 1), "rows": rows}))


if __name__ == "__main__":
    main()
