"""Consolidate's memory and time against the number of images (docs/SCALE.md).

Builds a run folder of synthetic signatures with the sizes of real ones (detail 18 432 B,
thumbnail ~13.5 KB of incompressible bytes, FV 1 280 float16 unless --no-fv) in batches of
256, and, for an incremental run, a baseline made by a full consolidate of the other
images. Then times `all_signatures` + `write_shards` (the consolidate stage's work) in a
fresh process and prints its wall seconds, Arrow's peak allocation and the process's peak
RSS next to the bytes of the columns it streams (FV, detail, thumbnail), which the version
before session 10 held all at once.

    python bench/consolidate.py --images 20000 100000 [--fresh 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins"))

from npimage.ingest.consolidate import all_signatures, write_shards  # noqa: E402
from npimage.schemas import CATALOG, SIGNATURES  # noqa: E402
from npimage.storage.parquet_io import write_table  # noqa: E402

DETAIL_BYTES = 128 * 128 + 2 * 32 * 32
THUMB_BYTES = 13_500
FV_DIM = 1280
BATCH = 256

_MEASURE = """
import json, resource, sys, time
from pathlib import Path
import pyarrow as pa
from npimage.ingest.consolidate import all_signatures, shard_rows, write_shards
from npimage.schemas import CATALOG
from npimage.storage.parquet_io import read_table
run = Path(sys.argv[1]); base = Path(sys.argv[2]) if len(sys.argv) > 2 else None
t0 = time.perf_counter()
sigs = all_signatures(run, read_table(run / "catalog.parquet", CATALOG), base)
shards = write_shards(sigs, run / "signatures", shard_rows(sigs.num_rows, 200_000, 1024))
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": sigs.num_rows,
                  "shards": len(shards), "arrow_peak": pa.default_memory_pool().max_memory(),
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def rows(ids: list[str], fv: bool, rng: np.random.Generator) -> pa.Table:
    """Signature rows with real-sized, incompressible heavy columns."""
    n = len(ids)
    vectors = (pa.FixedSizeListArray.from_arrays(
        pa.array(rng.standard_normal(n * FV_DIM).astype(np.float16)), FV_DIM)
        .cast(pa.list_(pa.float16())) if fv else pa.nulls(n, pa.list_(pa.float16())))
    return pa.table({
        "client_id": ["bench"] * n, "image_id": ids, "sha256": ids, "size_bytes": [1] * n,
        "width": [350] * n, "height": [350] * n,
        "ahash": rng.integers(-2**62, 2**62, n), "dhash": rng.integers(-2**62, 2**62, n),
        "phash": rng.integers(-2**62, 2**62, n), "fv": vectors,
        "fv_model": ["bench"] * n if fv else [None] * n,
        "computed_at": [datetime(2026, 1, 1, tzinfo=UTC)] * n,
        "detail": [rng.bytes(DETAIL_BYTES) for _ in range(n)], "sig_version": [2] * n,
        "thumb": [rng.bytes(THUMB_BYTES) for _ in range(n)],
    }).cast(SIGNATURES)


def catalog(ids: list[str]) -> pa.Table:
    return pa.table({c: ids if c == "image_id" else [None] * len(ids)
                     for c in CATALOG.names}).cast(CATALOG)


def build_run(run: Path, ids: list[str], every: list[str], fv: bool, seed: int) -> None:
    """A run folder whose plan is `ids` in batches of BATCH, catalogue `every`."""
    rng = np.random.default_rng(seed)
    for i, start in enumerate(range(0, len(ids), BATCH)):
        part = ids[start:start + BATCH]
        write_table(catalog(part), run / "plan" / f"batch-{i:05d}.parquet", CATALOG)
        write_table(rows(part, fv, rng), run / "sig_batches" / f"batch-{i:05d}.parquet")
    write_table(catalog(every), run / "catalog.parquet", CATALOG)


def measure(n: int, fresh_share: float, fv: bool, tmp: Path) -> dict[str, float]:
    """One consolidate of n images, `fresh_share` of them computed by the run."""
    every = [f"img{i:09d}" for i in range(n)]
    rng = np.random.default_rng(n)
    fresh = every if fresh_share >= 1 else sorted(
        rng.choice(every, max(1, int(n * fresh_share)), replace=False).tolist())
    args = [str(tmp / "run")]
    if fresh is not every:
        fresh_set = set(fresh)
        old = [i for i in every if i not in fresh_set]
        build_run(tmp / "base", old, old, fv, 1)
        base_sigs = all_signatures(tmp / "base", catalog(old), None)
        write_shards(base_sigs, tmp / "base" / "signatures", 200_000)
        args.append(str(tmp / "base"))
    build_run(tmp / "run", fresh, every, fv, 2)
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    done = subprocess.run([sys.executable, "-c", _MEASURE, *args], env=env, check=True,
                          capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["heavy_bytes"] = n * (DETAIL_BYTES + THUMB_BYTES + (2 * FV_DIM if fv else 0))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--fresh", type=float, default=1.0,
                    help="share of the images the run computed (1: a full run; less: an "
                         "incremental run over a baseline of the others)")
    ap.add_argument("--no-fv", action="store_true", help="signatures without feature vectors")
    args = ap.parse_args(argv)
    if not 0 < args.fresh <= 1:
        ap.error("--fresh must be in (0, 1]")
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"{'full' if args.fresh >= 1 else f'incremental ({args.fresh:g} fresh)'} run, "
          f"FV {'off' if args.no_fv else 'on'}\n")
    print("| images | FV + detail + thumbnail | seconds | Arrow peak | peak RSS |")
    print("|---|---|---|---|---|")
    for n in args.images:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            r = measure(n, args.fresh, not args.no_fv, Path(tmp))
        print(f"| {n:,} | {r['heavy_bytes'] / 2**30:.2f} GiB | {r['seconds']:.1f} | "
              f"{r['arrow_peak'] / 2**20:.0f} MiB | {r['max_rss_kb'] / 1024:.0f} MiB |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
