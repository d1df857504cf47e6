"""Wall time of verify_pairs on one thread, two threads and two processes (issue #12 cost).

Takes a pair set that bench/verify_cost.py built and cached (default: demo seed 0's,
`bench/verify_cost.py --sets demo0` makes it), repeats it `--copies` times so that it
passes verify.PROCESSES_FROM, and times the three ways twice each, alternating. Run it on
a quiet machine: with both cores already busy no way can gain.

    .venv/bin/python bench/verify_parallel.py [--pairs bench/out/verify/pairs-demo0.pkl]
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))


def main() -> int:
    from npimage.matching import verify as V

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=Path,
                    default=REPO / "bench" / "out" / "verify" / "pairs-demo0.pkl")
    ap.add_argument("--copies", type=int, default=3)
    args = ap.parse_args()
    if not args.pairs.exists():
        print(f"{args.pairs} not found: run bench/verify_cost.py --sets demo0 first",
              file=sys.stderr)
        return 1
    s = pickle.loads(args.pairs.read_bytes())
    score = np.tile(np.asarray(s["score"], np.float32), args.copies)
    da, db = list(s["da"]) * args.copies, list(s["db"]) * args.copies
    V.verify_pairs(score[:600], da[:600], db[:600], threads=1)  # compiled kernels loaded
    for mode in ("1 thread", "2 threads", "2 processes") * 2:
        t0, c0 = time.perf_counter(), time.process_time()
        V.verify_pairs(score, da, db, threads=1 if mode == "1 thread" else 2,
                       processes=mode == "2 processes")
        wall = time.perf_counter() - t0
        print(f"{mode}: {len(score)} pairs, wall {wall:.1f} s = {1000 * wall / len(score):.2f} "
              f"ms/pair, this process's CPU {time.process_time() - c0:.1f} s, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
