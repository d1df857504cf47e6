"""What verification adds to a nightly of 10 000 new images against 1 000 000 (issue #12).

The scale issue's budget is the compare stage of that nightly (< 5 minutes on two cores).
This script measures, in one run on one machine:

1. compare: `bench/compare.py --n NEW --m CATALOGUE` (synthetic signatures, shipped weights,
   FV on), in a subprocess; its JSON line gives the seconds;
2. verify: the real stage's `verify_matches` (visual check in processes, second look at
   stickers on the stored 240 px thumbnails, GTIN check) over the pairs a real run sent to
   verification, repeated to the nightly's count: NEW x the run's verified pairs per image.
   The run is a published run of a data dir (default: `make demo`'s, client `demo`: a
   catalogue of look-alike packshots, the densest case we have);

and prints a table of both and their sum against the 300 s budget. Quiet machine only:
other work on the two cores counts against both stages.

    .venv/bin/python bench/nightly_verify.py [--data-dir data] [--client demo]
        [--new 10000] [--catalogue 1000000] [--skip-compare] [--split]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
BUDGET_S = 300.0


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the verify processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for the table's machine line."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "")


def run_compare(new: int, catalogue: int) -> dict[str, float]:
    """bench/compare.py's JSON result for the nightly (FV on, shipped weights)."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "compare.py"), "--n", str(new),
                          "--m", str(catalogue)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "plugins")})
    print(out.stdout, flush=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def nightly_pairs(run_dir: Path, new: int) -> tuple[object, int, int]:
    """(pairs to verify repeated to the nightly's count, the run's pairs, its images)."""
    import pyarrow as pa

    from npimage.matching import compare as cmp
    from npimage.matching.verify import pairs_to_verify
    from npimage.storage.parquet_io import read_table

    shards = sorted((run_dir / "matches").glob("shard-*.parquet"))
    matches = pa.concat_tables([read_table(p, cmp.MATCH_COLUMNS) for p in shards])
    pairs = pairs_to_verify(matches)
    images = len(set(matches["image_id"].to_pylist()))
    count = round(new * pairs.num_rows / max(images, 1))
    return pairs.take(pa.array(np.resize(np.arange(pairs.num_rows), count))), \
        pairs.num_rows, images


def codes_of(run_dir: Path) -> object | None:
    """The published run's (image_id, gtin) code rows, None when it read no codes."""
    from npimage.storage.parquet_io import read_table

    path = run_dir / "image_codes.parquet"
    return read_table(path).select(["image_id", "gtin"]) if path.exists() else None


def time_verify(pairs: object, run_dir: Path, second_look: bool) -> tuple[float, float, int]:
    """(wall s, CPU s, findings) of verify_matches over the pairs."""
    from npimage.ingest.signatures import stored_by_id
    from npimage.matching.verify import verify_matches

    ids = sorted(set(pairs["a"].to_pylist()) | set(pairs["b"].to_pylist()))  # type: ignore[index]
    details = stored_by_id(run_dir, "detail", ids)
    thumbs = partial(stored_by_id, run_dir, "thumb") if second_look else None
    codes = codes_of(run_dir)
    t0, c0 = time.perf_counter(), _cpu()
    out = verify_matches(pairs, details, codes, thumbs)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    found = sum(r != "detail identical" for r in out["verify_reason"].to_pylist()) // 2
    return wall, cpu, found


def main() -> int:
    from npimage.storage.layout import Layout

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(REPO / "data"))
    ap.add_argument("--client", default="demo")
    ap.add_argument("--new", type=int, default=10_000)
    ap.add_argument("--catalogue", type=int, default=1_000_000)
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--split", action="store_true",
                    help="also time the stage without the second look")
    args = ap.parse_args()
    run_dir = Layout.of(args.data_dir).published_run_dir(args.client)
    if run_dir is None:
        print(f"no published run of client {args.client!r} in {args.data_dir}: "
              "run `make demo` first", file=sys.stderr)
        return 1
    run_dir = Path(str(run_dir))
    print(f"machine: {platform.machine()} {cpu_model()}, {os.cpu_count()} cores,"
          f" load {os.getloadavg()[0]:.1f} at start; run {run_dir}", flush=True)
    pairs, per_run, images = nightly_pairs(run_dir, args.new)
    n = pairs.num_rows  # type: ignore[attr-defined]
    print(f"the run sent {per_run} pairs of {images} images to verification "
          f"({per_run / images:.2f} per image): {n} pairs for {args.new} new images", flush=True)
    rows = []
    if not args.skip_compare:
        got = run_compare(args.new, args.catalogue)
        rows.append(("compare (bench/compare.py, FV on)", got["seconds"], got["cpu_seconds"],
                     f"peak RSS {got['peak_rss_mb']} MB, recall {got['recall']}"))
    wall, cpu, found = time_verify(pairs, run_dir, True)
    rows.append(("verify: visual + second look + GTIN", wall, cpu, f"{found} findings"))
    if args.split:
        wall2, cpu2, found2 = time_verify(pairs, run_dir, False)
        rows.append(("verify without the second look", wall2, cpu2, f"{found2} findings"))
    print("\n| stage | wall s | CPU s | note |\n|---|---|---|---|")
    for name, w, c, note in rows:
        print(f"| {name} | {w:.1f} | {c:.1f} | {note} |")
    total = sum(w for name, w, _, _ in rows[:2])
    if not args.skip_compare:
        print(f"| **compare + verify** | **{total:.1f}** | | budget {BUDGET_S:.0f} s: "
              f"{'inside' if total < BUDGET_S else 'over'} |")
    print(f"verify per pair: {1000 * wall / max(n, 1):.2f} ms wall, load "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(json.dumps({"pairs": n, "verify_s": round(wall, 1),
                      "compare_s": None if args.skip_compare else round(rows[0][1], 1),
                      "total_s": None if args.skip_compare else round(total, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
