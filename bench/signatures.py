"""Signature stage on real photos against the POC's method, images/s side by side.

The POC computed its hashes in a Python loop of imagehash calls on each opened file
(`imagehash.average_hash(Image.open(path))`, then dhash, ...): every call converts the
full-size decoded picture again. Rows of the table, all on the same files in one run,
hashes only (FV speed: bench/fv_speed.py):

- POC method: for each file, Image.open + imagehash.average_hash, dhash and phash on
  the opened picture, + sha256 of the bytes (the POC's "dsize" signature), 1 process;
- npimage, per-image work: npimage.ingest.decode.decode (one decode, at the JPEG DCT scale
  the consumers need) + npimage.ingest.signatures.pixel_features (grey copy, detail
  signature, thumbnail) + the batch's hashes in NumPy, + sha256, 1 process;
- npimage signature stage: npimage.ingest.signatures.compute_batch on a catalog Parquet (read,
  sha256, decode, hashes, detail, thumbnail, rejects, Parquet out), 1 process;
- the same stage on the batches mapped over worker processes, as `npimage run` and the
  DAG's mapped tasks do (one per core).

Datasets: ../shared/datasets/grocery-store (smartphone photos, most 348x348) and the
pdq-edits bridge photos (1600x1004 and edits: large pictures, where draft decoding pays).
Files are read once first so that the page cache is warm.

A first table gives the per-step cost (ms per image, 1 process): each step is timed per
image as the best of `--repeat` calls, summed over the images, so that a busy machine
(preemption) inflates it less than a wall-clock loop.

A second table gives the hash candidate density of these real photos: the share of all
pairs whose hash distances could still reach the threshold (npimage.matching.compare.hash_bound
with the default weights), without FV and with the FV term's headroom, beside what
random hashes give. compare scores candidates one by one up to the density in
npimage.matching.compare.SPARSE_MAX_DENSITY (10 % with FV, 1.5 % without), denser tiles densely.

    .venv/bin/python bench/signatures.py [--limit 1024] [--repeat 2] [--steps-only]
                                         [--baseline CHECKOUT] [--no-density]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from npimage.ingest.decode import decode
from npimage.ingest.signatures import compute_batch, pixel_features
from npimage.ingest.thumbnail import thumbnail_jpeg
from npimage.matching import compare as cmp
from npimage.matching.detail import detail_signature
from npimage.matching.hashing import grey_copy, hashes_of_greys, image_hashes
from npimage.matching.scoring import Scorer, Weights
from npimage.schemas import CATALOG

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
SETS = {
    "grocery-store (348x348 photos)": DATASETS / "grocery-store/dataset/train",
    "pdq-edits bridge (1600x1004 photos)": DATASETS / "pdq-edits/bridge-mods",
}
MAX_PIXELS = 250_000_000
BATCH = 256
#: Photos per dataset at least (a small set is cycled; its files are then read again).
MIN_IMAGES = 240


def poc_method(paths: list[Path]) -> None:
    """The POC's loop: imagehash calls on each opened file, sha256 of its bytes."""
    for p in paths:
        hashlib.sha256(p.read_bytes()).hexdigest()
        with Image.open(p) as img:
            imagehash.average_hash(img)
            imagehash.dhash(img)
            imagehash.phash(img)


def npimage_core(paths: list[Path]) -> None:
    """npimage's per-image work without Parquet: sha256, one decode, grey copy, detail,
    thumbnail, then the hashes of the whole set in one NumPy pass."""
    greys = []
    for p in paths:
        data = p.read_bytes()
        hashlib.sha256(data).hexdigest()
        greys.append(pixel_features(decode(data, MAX_PIXELS).rgb)[0])
    hashes_of_greys(np.stack(greys))


def best_per_item(fn: Callable[[object], object], items: list, repeat: int) -> float:
    """Seconds per item: for each item the best of `repeat` calls, averaged over items."""
    total = 0.0
    for item in items:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(item)
            best = min(best, time.perf_counter() - t0)
        total += best
    return total / max(len(items), 1)


def step_costs(paths: list[Path], repeat: int) -> dict[str, float]:
    """ms per image of each step of the signature work, 1 process (see the module doc)."""
    datas = [p.read_bytes() for p in paths]
    rgbs = [decode(d, MAX_PIXELS).rgb for d in datas]
    greys = np.stack([grey_copy(rgb) for rgb in rgbs])
    batch = best_seconds(lambda: hashes_of_greys(greys), repeat) / len(paths)
    steps = {
        "read": best_per_item(lambda p: p.read_bytes(), paths, repeat),
        "sha256": best_per_item(lambda d: hashlib.sha256(d).hexdigest(), datas, repeat),
        "decode": best_per_item(lambda d: decode(d, MAX_PIXELS), datas, repeat),
        "grey copy": best_per_item(grey_copy, rgbs, repeat),
        "hashes (batch)": batch,
        "detail": best_per_item(detail_signature, rgbs, repeat),
        "thumbnail": best_per_item(thumbnail_jpeg, rgbs, repeat),
    }
    return {k: v * 1000 for k, v in steps.items()}


def step_table(sets: dict[str, list[Path]], repeat: int, limit: int) -> str:
    """Markdown table: per-step ms/image per dataset, their sum and the images/s it allows."""
    costs = {name: step_costs(paths[:limit], repeat) for name, paths in sets.items()}
    names = list(sets)
    lines = ["| step | " + " | ".join(f"{n}: ms/image" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for step in next(iter(costs.values())):
        lines.append(f"| {step} | " + " | ".join(f"{costs[n][step]:.3f}" for n in names) + " |")
    totals = {n: sum(c.values()) for n, c in costs.items()}
    lines.append("| **total** | " + " | ".join(f"**{totals[n]:.2f}**" for n in names) + " |")
    lines.append("| images/s per core | " + " | ".join(f"{1000 / totals[n]:.0f}" for n in names)
                 + " |")
    return "\n".join(lines)


def _module(name: str, path: Path) -> object:
    """A module of another checkout, loaded under its own name (not npimage's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def interleaved_table(sets: dict[str, list[Path]], baseline: Path, limit: int,
                      rounds: int = 5) -> str:
    """ms per image of the POC, the `baseline` checkout's per-image work and ours, each
    image timed as the best of `rounds` interleaved rounds (all three see the same load)."""
    pkg = baseline / "plugins" / "npimage"
    old_decode = _module("baseline_decode", pkg / "ingest" / "decode.py")
    old_hashing = _module("baseline_hashing", pkg / "matching" / "hashing.py")
    old_detail = _module("baseline_detail", pkg / "matching" / "detail.py")

    def poc(data: bytes) -> None:
        hashlib.sha256(data).hexdigest()
        img = Image.open(io.BytesIO(data))
        imagehash.average_hash(img)
        imagehash.dhash(img)
        imagehash.phash(img)

    def old(data: bytes) -> None:
        hashlib.sha256(data).hexdigest()
        rgb = old_decode.decode(data, MAX_PIXELS).rgb  # type: ignore[attr-defined]
        old_hashing.image_hashes(rgb)  # type: ignore[attr-defined]
        old_detail.detail_signature(rgb)  # type: ignore[attr-defined]

    def new(data: bytes) -> None:
        hashlib.sha256(data).hexdigest()
        pixel_features(decode(data, MAX_PIXELS).rgb)

    methods = {"POC: sha256 + imagehash average, difference, perceptual": poc,
               f"baseline {baseline.name}: sha256, decode, hashes, detail": old,
               "npimage: sha256, decode, grey copy, detail, thumbnail": new}
    lines = ["| photos | method | ms per image |", "|---|---|---|"]
    for name, paths in sets.items():
        datas = [p.read_bytes() for p in paths[:limit]]
        total = dict.fromkeys(methods, 0.0)
        for data in datas:
            best = dict.fromkeys(methods, float("inf"))
            for _ in range(rounds):
                for label, fn in methods.items():
                    t0 = time.perf_counter()
                    fn(data)
                    best[label] = min(best[label], time.perf_counter() - t0)
            for label in methods:
                total[label] += best[label]
        for label in methods:
            lines.append(f"| {name} ({len(datas)}) | {label} | "
                         f"{total[label] / len(datas) * 1000:.2f} |")
    return "\n".join(lines)


def write_batches(paths: list[Path], folder: Path) -> list[Path]:
    """Catalog Parquet batches of BATCH photos, as the plan stage writes them."""
    now = datetime.now(UTC)
    out = []
    for b, start in enumerate(range(0, len(paths), BATCH)):
        chunk = paths[start:start + BATCH]
        rows = {
            "client_id": ["bench"] * len(chunk),
            "image_id": [f"{start + i:06d}" for i in range(len(chunk))],
            "product_id": [p.parent.name for p in chunk],
            "reference": [None] * len(chunk),
            "uri": [str(p) for p in chunk],
            "size_bytes": [p.stat().st_size for p in chunk],
            "modified_at": [now] * len(chunk),
        }
        path = folder / f"batch-{b:05d}.parquet"
        pq.write_table(pa.table(rows, schema=CATALOG), path)
        out.append(path)
    return out


def stage_batch(batch: Path) -> int:
    """npimage.ingest.signatures.compute_batch on one batch, hashes only; images computed."""
    out = batch.with_suffix(".sig.parquet")
    result = compute_batch(batch, None, out, batch.with_suffix(".rej.parquet"), extractor=None,
                           max_pixels=MAX_PIXELS, read_timeout=30.0)
    return result.computed


def stage(batches: list[Path], workers: int) -> None:
    """The signature stage over all batches, in `workers` spawned processes (or inline)."""
    if workers <= 1:
        for b in batches:
            stage_batch(b)
        return
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(stage_batch, batches))


def best_seconds(fn: Callable[[], None], repeat: int) -> float:
    """Wall seconds of the fastest of `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    """Time every method on every dataset and print one Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=1024, help="photos per dataset (first, sorted)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--threshold", type=float, default=0.82)
    ap.add_argument("--step-images", type=int, default=120,
                    help="images per dataset in the per-step table")
    ap.add_argument("--no-density", action="store_true", help="skip the candidate density table")
    ap.add_argument("--steps-only", action="store_true", help="only the per-step table")
    ap.add_argument("--baseline", type=Path,
                    help="another checkout (e.g. of the previous release): adds a table of "
                         "its per-image work beside ours and the POC's, interleaved")
    args = ap.parse_args(argv)
    sets = {name: sorted(p for p in folder.rglob("*.jpg"))[: args.limit]
            for name, folder in SETS.items() if folder.is_dir()}
    for name, paths in sets.items():  # a small set is cycled so that timings are stable
        sets[name] = (paths * (-(-MIN_IMAGES // max(len(paths), 1))))[:max(MIN_IMAGES,
                                                                            len(paths))]
    if not sets:
        print(f"datasets not found under {DATASETS} (needs ../shared/datasets)", file=sys.stderr)
        return 2
    print(f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}; "
          f"best of {args.repeat}; hashes only\n")
    for paths in sets.values():
        for p in paths:
            p.read_bytes()
    print("per step, 1 process (best of --repeat per image, summed):\n")
    print(step_table(sets, max(args.repeat, 3), args.step_images))
    print(f"\nload average {os.getloadavg()[0]:.1f}\n")
    if args.baseline:
        print(interleaved_table(sets, args.baseline, args.step_images))
        print(f"\nload average {os.getloadavg()[0]:.1f}\n")
    if args.steps_only:
        return 0
    print("| dataset | images | method | seconds | images/s | vs POC |")
    print("|---|---|---|---|---|---|")
    for name, paths in sets.items():
        for p in paths:
            p.read_bytes()
        with tempfile.TemporaryDirectory() as tmp:
            batches = write_batches(paths, Path(tmp))
            runs = [
                ("POC method (Python loop of imagehash calls)", partial(poc_method, paths)),
                ("npimage per-image work (no Parquet), 1 process", partial(npimage_core, paths)),
                ("npimage signature stage, 1 process", partial(stage, batches, 1)),
                (f"npimage signature stage, {args.workers} processes",
                 partial(stage, batches, args.workers)),
            ]
            poc = None
            for label, fn in runs:
                seconds = best_seconds(fn, args.repeat)
                poc = poc or seconds
                print(f"| {name} | {len(paths)} | {label} | {seconds:.2f} | "
                      f"{len(paths) / seconds:.0f} | {poc / seconds:.1f}x |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}")
    if args.no_density:
        return 0
    print("\n| dataset | distinct photos | pairs | candidates, hashes only "
          "| candidates, hashes + FV bound | random hashes (hashes only / + FV) |")
    print("|---|---|---|---|---|---|")
    for name, folder in SETS.items():
        if folder.is_dir():
            print(candidate_density(name, sorted(folder.rglob("*.jpg")), args.threshold))
    return 0


def candidate_density(name: str, paths: list[Path], threshold: float) -> str:
    """A table row: share of pairs of these photos that are hash candidates."""
    hashes = np.array([image_hashes(decode(p.read_bytes(), MAX_PIXELS).rgb) for p in paths],
                      np.int64).view(np.uint64)
    n = len(paths)
    pairs = n * (n - 1)
    cells = []
    for fv in (False, True):
        bound = cmp.hash_bound(Scorer(Weights(), fv), threshold)
        qi, ci = cmp.hash_candidates(hashes, hashes, bound, method="numpy")
        cells.append((int(np.sum(qi != ci)) / pairs, bound.random_rate))
    return (f"| {name} | {n} | {pairs} | {cells[0][0]:.2e} | {cells[1][0]:.2e} | "
            f"{cells[0][1]:.1e} / {cells[1][1]:.1e} |")


if __name__ == "__main__":
    sys.exit(main())
