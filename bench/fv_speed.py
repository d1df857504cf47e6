"""Speed of the signature stage with and without feature vectors (FV), in images/s.

Real photos (../shared/datasets/grocery-store/dataset/train, 348x348 JPEGs, sorted, the
first --limit of them) go through:

- stage: npimage.ingest.signatures.compute_batch on a catalog Parquet of those photos
  (read, sha256, decode once, ahash/dhash/phash, FV in calls of 32, Parquet out);
- core: the same work without Parquet - decode + hashes (+ extractor.embed per 32 images);
- fv only: extractor.embed on already decoded pictures (the model's own throughput).

Files are read once beforehand so that the page cache is warm; the model is loaded (and,
the first time, converted) and warmed up before timing. TensorFlow uses the task's CPU
share (NPIMAGE_FV_THREADS or the CPU affinity). Usage:

    .venv/bin/python bench/fv_speed.py [--limit 1024] [--model SPEC] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from npimage.fv.models import CALL_BATCH, cpu_share, load
from npimage.ingest.decode import decode
from npimage.matching.hashing import image_hashes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared/datasets/grocery-store/dataset/train"
MAX_PIXELS = 250_000_000


def best_rate(fn, n: int, repeat: int) -> float:
    """Images/s of the fastest of `repeat` runs of fn() over n images."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def core(paths: list[Path], extractor) -> None:
    """Decode + hashes (+ FV in calls of CALL_BATCH) of every photo, results dropped."""
    pending = []
    for p in paths:
        img = decode(p.read_bytes(), MAX_PIXELS)
        image_hashes(img.rgb)
        if extractor is not None:
            pending.append(img.rgb)
            if len(pending) == CALL_BATCH:
                extractor.embed(pending)
                pending = []
    if extractor is not None and pending:
        extractor.embed(pending)


def stage_runner(paths: list[Path], workdir: Path):
    """A function running npimage.ingest.signatures.compute_batch over the photos, or None."""
    try:
        from npimage.ingest.signatures import compute_batch
        from npimage.schemas import CATALOG
    except ImportError:
        return None
    now = datetime.now(UTC)
    rows = {
        "client_id": ["bench"] * len(paths),
        "image_id": [str(i) for i in range(len(paths))],
        "product_id": [p.parent.name for p in paths],
        "reference": [None] * len(paths),
        "uri": [str(p) for p in paths],
        "size_bytes": [p.stat().st_size for p in paths],
        "modified_at": [now] * len(paths),
    }
    batch = workdir / "batch.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table(rows, schema=CATALOG), batch)

    def run(extractor) -> None:
        compute_batch(batch, None, workdir / "sig.parquet", workdir / "rej.parquet",
                      extractor=extractor, max_pixels=MAX_PIXELS, read_timeout=30.0)

    return run


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=1024)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--cache", type=Path, default=REPO / "data/models")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"dataset not found: {args.data} (needs ../shared/datasets)", file=sys.stderr)
        return 2
    paths = sorted(args.data.rglob("*.jpg"))[: args.limit]
    for p in paths:  # warm the page cache
        p.read_bytes()
    t0 = time.perf_counter()
    extractor = load(args.model, args.cache)
    load_s = time.perf_counter() - t0
    decoded = [decode(p.read_bytes(), MAX_PIXELS).rgb for p in paths]
    extractor.embed(decoded[:CALL_BATCH])  # warm-up: first call builds the graph
    n, r = len(paths), args.repeat
    print(f"{n} photos from {args.data}; model {extractor.model_id} "
          f"(input {extractor.input_size}x{extractor.input_size}, dim {extractor.dim}); "
          f"TF threads {cpu_share()}; model load {load_s:.1f}s; "
          f"load average before {os.getloadavg()[0]:.1f}; best of {r}\n")
    print("| measure | FV off (img/s) | FV on (img/s) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        stage = stage_runner(paths, Path(tmp))
        if stage is not None:
            off = best_rate(lambda: stage(None), n, r)
            on = best_rate(lambda: stage(extractor), n, r)
            print(f"| signature stage (compute_batch) | {off:.0f} | {on:.0f} |")
    off = best_rate(lambda: core(paths, None), n, r)
    on = best_rate(lambda: core(paths, extractor), n, r)
    print(f"| decode + hashes (+ FV) | {off:.0f} | {on:.0f} |")
    fv = best_rate(lambda: extractor.embed(decoded), n, r)
    print(f"| FV only (embed, calls of {CALL_BATCH}) | - | {fv:.0f} |")
    print(f"\nload average after {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
