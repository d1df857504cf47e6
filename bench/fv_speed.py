"""Speed of the signature stage with and without feature vectors (FV), in images/s.

Real photos (../shared/datasets/grocery-store/dataset/train, 348x348 JPEGs, sorted, the
first --limit of them) go through:

- stage: npimage.ingest.signatures.compute_batch on a catalog Parquet of those photos
  (read, sha256, decode once, ahash/dhash/phash, FV in calls of 32, Parquet out);
- core: the same work without Parquet - decode + hashes (+ extractor.embed per 32 images);
- fv only: extractor.embed on already decoded pictures (the model's own throughput).

Files are read once beforehand so that the page cache is warm; the model is loaded (and,
the first time, converted) and warmed up before timing. TensorFlow uses the task's CPU
share (NPIMAGE_FV_THREADS or the CPU affinity); the engine is --engine (default: the
setting NPIMAGE_FV_ENGINE, else npimage.fv.tflite.DEFAULT_ENGINE).

--options adds a table of what TensorFlow offers on CPUs, each in fresh processes (thread
pools are fixed when TensorFlow starts), on the first --option-limit photos already fitted
(fit_square is timed on its own row): engine (TensorFlow on the SavedModel: float32, XLA
compiled, or oneDNN bfloat16; TF Lite with XNNPACK at fp32, fp16 weights, dynamic-range
int8 or full-integer qs8), threads, and batch size; the time runs from the fitted uint8
pixels (their conversion to float32 included, which qs8 does not need) to the vectors.
Columns: images/s of one process, CPU ms per image (less sensitive to other load on the
machine), images/s of two such processes at once (the
2-worker case), the least cosine of its vectors with the first row's ("tf-fp32"), and the
start-up: TensorFlow's import
and the model's load from the warm cache. Usage:

    .venv/bin/python bench/fv_speed.py [--limit 1024] [--model SPEC] [--repeat 2]
                                       [--engine E] [--options] [--option-limit 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from npimage.fv.models import CALL_BATCH, cpu_share, fit_square, load
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


#: (engine, threads, batch) rows of the --options table; engine "tf-xla" is a measurement
#: only: the "tf-fp32" engine's function compiled with jit_compile=True. It is slow (XLA's
#: CPU convolutions; minutes per row on a loaded machine): run only when named in
#: --option-engines.
OPTIONS = (("tf-fp32", 1, 32), ("tf-fp32", 2, 8), ("tf-fp32", 2, 32), ("tf-fp32", 2, 64),
           ("tf-xla", 2, 32), ("tf-bf16", 1, 32), ("tf-bf16", 2, 32), ("tflite-fp32", 1, 1),
           ("tflite-fp32", 2, 1), ("tflite-fp16", 1, 1), ("tflite-int8", 1, 1),
           ("tflite-qs8", 1, 1), ("tflite-qs8", 2, 1))


def option_child(args: argparse.Namespace) -> int:
    """One --options row in this (fresh) process: prints a JSON line of its figures."""
    engine, threads, batch = args.child.split(",")
    os.environ["NPIMAGE_FV_THREADS"] = threads
    t0 = time.perf_counter()
    from npimage.fv.quiet import tensorflow

    tf = tensorflow()
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    extractor = load(args.model, args.cache, engine="tf-fp32" if engine == "tf-xla" else engine)
    load_s = time.perf_counter() - t0
    run = extractor._run  # uint8 [N, S, S, 3] -> [N, D], the pixels' conversion included
    if engine == "tf-xla":  # a measurement only, not an engine
        from npimage.fv.models import features_fn

        size = extractor.input_size
        fn = tf.function(features_fn(extractor._obj), jit_compile=True, input_signature=[
            tf.TensorSpec([None, size, size, 3], tf.float32)])
        run = lambda px: fn(tf.constant(px.astype(np.float32) / 255.0)).numpy()  # noqa: E731
    x = np.load(args.pixels)
    b = int(batch)

    def embed() -> np.ndarray:
        return np.concatenate([run(x[s:s + b]) for s in range(0, len(x), b)])

    t0 = time.perf_counter()
    vectors = embed()  # warm-up (XLA: compiles here)
    first_s = time.perf_counter() - t0
    wall, cpu = clock(embed, args.repeat)
    np.save(args.out, vectors)
    print(json.dumps({"import_s": import_s, "load_s": load_s, "first_s": first_s,
                      "rate": len(x) / wall, "cpu_ms": 1000 * cpu / len(x),
                      "model_id": extractor.model_id}))
    return 0


def clock(fn, repeat: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of the fastest of `repeat` runs of fn()."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu


def run_children(args: argparse.Namespace, option: tuple, pixels: Path, copies: int,
                 out: Path) -> list[dict]:
    """Run `copies` child processes of one option at once; their JSON figures."""
    cmd = [sys.executable, __file__, "--model", args.model, "--cache", str(args.cache),
           "--repeat", str(args.repeat), "--pixels", str(pixels),
           "--child", ",".join(map(str, option))]
    procs = [subprocess.Popen([*cmd, "--out", str(out.with_suffix(f".{i}.npy"))],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for i in range(copies)]
    results = []
    for proc in procs:
        text, _ = proc.communicate()
        lines = [line for line in text.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            raise RuntimeError(f"option {option} failed (exit {proc.returncode})")
        results.append(json.loads(lines[-1]))
    return results


def options_table(args: argparse.Namespace, paths: list[Path]) -> None:
    """Print the --options table (module docstring)."""
    from npimage.fv.tflite import cosines

    decoded = [decode(p.read_bytes(), MAX_PIXELS).rgb for p in paths[: args.option_limit]]
    wall, cpu = clock(lambda: [fit_square(img, 224) for img in decoded], args.repeat)
    n = len(decoded)
    print(f"\n{n} photos fitted to 224x224 (fit_square, pad): {1000 * wall / n:.2f} ms/image "
          f"wall, {1000 * cpu / n:.2f} ms CPU; load average {os.getloadavg()[0]:.1f}\n")
    print("| engine | threads | batch | img/s, 1 process | CPU ms/img | img/s, 2 processes "
          "| cosine vs tf (min) | TF import s | model load s | first call s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        px = Path(tmp) / "pixels.npy"
        np.save(px, np.stack([fit_square(img, 224) for img in decoded]))
        ref = None
        wanted = (args.option_engines.split(",") if args.option_engines
                  else [o[0] for o in OPTIONS if o[0] != "tf-xla"])
        for option in [o for o in OPTIONS if o[0] in wanted]:
            one = run_children(args, option, px, 1, Path(tmp) / "one")[0]
            vec = np.load(Path(tmp) / "one.0.npy")
            ref = vec if ref is None else ref
            two = run_children(args, option, px, 2, Path(tmp) / "two")
            pair = sum(r["rate"] for r in two)
            print(f"| {option[0]} | {option[1]} | {option[2]} | {one['rate']:.0f} | "
                  f"{one['cpu_ms']:.2f} | {pair:.0f} | {cosines(vec, ref).min():.5f} | "
                  f"{one['import_s']:.1f} | {one['load_s']:.1f} | {one['first_s']:.1f} |",
                  flush=True)
    print(f"\nload average after the options {os.getloadavg()[0]:.1f}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=1024)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--cache", type=Path, default=REPO / "data/models")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--engine", default=None, help="FV engine (default: the setting)")
    ap.add_argument("--options", action="store_true", help="also the table of options")
    ap.add_argument("--option-limit", type=int, default=256)
    ap.add_argument("--option-engines", default=None,
                    help="comma list: only the options of these engines (first row = reference)")
    ap.add_argument("--only-options", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--pixels", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return option_child(args)
    if not args.data.is_dir():
        print(f"dataset not found: {args.data} (needs ../shared/datasets)", file=sys.stderr)
        return 2
    paths = sorted(args.data.rglob("*.jpg"))[: args.limit]
    for p in paths:  # warm the page cache
        p.read_bytes()
    if args.only_options:
        for engine in dict.fromkeys(o[0] for o in OPTIONS if o[0] not in ("tf-xla", "tf-bf16")):
            load(args.model, args.cache, engine=engine)  # converted before the children run
        options_table(args, paths)
        return 0
    t0 = time.perf_counter()
    extractor = load(args.model, args.cache, engine=args.engine)
    load_s = time.perf_counter() - t0
    decoded = [decode(p.read_bytes(), MAX_PIXELS).rgb for p in paths]
    extractor.embed(decoded[:CALL_BATCH])  # warm-up: first call builds the graph
    n, r = len(paths), args.repeat
    print(f"{n} photos from {args.data}; model {extractor.model_id} "
          f"(input {extractor.input_size}x{extractor.input_size}, dim {extractor.dim}); "
          f"engine {extractor.engine}; TF threads {cpu_share()}; model load {load_s:.1f}s "
          f"(with TensorFlow's import); "
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
    if args.options:
        options_table(args, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
