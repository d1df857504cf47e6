"""Pack reading: speed of each reader, its share of a backfill and a nightly, and quality.

Everything is generated here (nothing downloaded): the demo catalogue (npimage_demo,
with its reading_truth.csv) and the rendered code set (npimage_demo.codeset).

1. Backfill: a full run of the demo catalogue minus 10 % of its images, FV off unless
   --fv, with `--read codes,text-all` (OCR of every image, to measure it on all); each
   stage timed, mapped stages on `--workers` processes.
2. Nightly: an incremental run that adds the 10 % back, `--read codes,text`.
3. Quality (docs/QUALITY.md targets) from the backfill's warehouse + the nightly:
   EAN-13 read exactly at native size, wrong GTINs, printed strengths read exactly,
   catalogue check (mismatches listed, false alarms); then codes after a 50 % resize
   of every picture; then the rendered code set by symbology x module size.

    .venv/bin/python bench/reading.py [--work bench/out/reading] [--products 160]
                                      [--variant-families 0] [--workers 2] [--fv]
                                      [--codes-only] [--photos DIR [--photos-max N]]

--codes-only skips the runs (1-2) and OCR: codes at native size and after a 50 % resize,
the rendered code set, and the code reader's CPU cost per picture, in about a minute.
--variant-families 12 draws the catalogue `npimage demo` reads (447 pictures).
--photos DIR (with --codes-only) also times, per picture of DIR (photos without codes,
e.g. ../shared/datasets grocery photos), the steps of the stage's read_image (read,
sha256, decode, grey) and read_codes, and says how many passed the screen (bar_like).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from npimage_demo.catalogue import build_demo_catalogue  # noqa: E402

from npimage import pipeline  # noqa: E402
from npimage.config import Settings  # noqa: E402
from npimage.quality.reading_eval import (  # noqa: E402
    evaluate_reading,
    format_reading,
    load_reading_truth,
)
from npimage.reading.codes import read_codes  # noqa: E402

MAPPED = {"signatures", "read_codes", "compare", "read_text"}


def _map(fn, ctx, items, workers):  # type: ignore[no-untyped-def]
    if workers <= 1 or len(items) <= 1:
        return [fn(ctx, i) for i in items]
    import multiprocessing as mp

    with ProcessPoolExecutor(min(workers, len(items)), mp_context=mp.get_context("spawn")) as p:
        return list(p.map(fn, [ctx] * len(items), items))


def timed_run(ctx, workers: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Seconds per stage of one run (the runner's order, reading stages included)."""
    t: dict[str, float] = {}

    def clock(name, fn):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = fn()
        t[name] = t.get(name, 0.0) + time.perf_counter() - t0
        return out

    clock("extract", lambda: pipeline.extract(ctx))
    batches = clock("plan", lambda: pipeline.plan(ctx))
    # the codes are read by the signature stage, from its decode (the runner's order)
    clock("signatures + codes", lambda: _map(pipeline.signatures, ctx, batches, workers))
    shards = clock("consolidate", lambda: pipeline.consolidate(ctx))
    clock("compare", lambda: _map(pipeline.compare_shard, ctx, shards, workers))
    clock("verify", lambda: pipeline.verify(ctx))
    clock("merge", lambda: pipeline.merge(ctx))
    text = clock("plan_text", lambda: pipeline.plan_text(ctx))
    clock("read_text", lambda: _map(pipeline.read_text, ctx, text, workers))
    clock("publish", lambda: pipeline.publish(ctx))
    return t


def _count(run_dir: Path, reader: str) -> int:
    import pyarrow.parquet as pq

    files = list((run_dir / "reading" / "reads").glob(f"{reader}-*.parquet"))
    return sum(pq.read_metadata(f).num_rows for f in files)


def _stage_table(name: str, t: dict[str, float], n_images: int, n_codes: int,
                 n_text: int) -> None:
    total = sum(t.values())
    print(f"\n{name}: {n_images} images in the run ({n_codes} read for codes), "
          f"{total:.1f} s in all")
    print("| stage | s | share | images | images/s |")
    print("|---|---:|---:|---:|---:|")
    per = {"signatures + codes": n_images, "read_text": n_text}
    for stage, s in t.items():
        n = per.get(stage)
        rate = f"{n / s:.1f}" if n and s > 0 else ""
        print(f"| {stage} | {s:.1f} | {100 * s / total:.0f} % | {n if n is not None else ''} "
              f"| {rate} |")


def _subset_manifest(manifest: Path, out: Path, keep: float) -> int:
    rows = list(csv.DictReader(manifest.open()))
    kept = [r for i, r in enumerate(rows) if (i * 7919) % 100 < keep * 100]
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in kept:
            w.writerow({**r, "uri": str(manifest.parent / r["uri"])})
    return len(kept)


def _read_resized(args: tuple[str, str, float]) -> tuple[str, set[str]]:
    image_id, path, scale = args
    with Image.open(path) as im:
        g = im.convert("L")
    g = g.resize((max(1, round(g.width * scale)), max(1, round(g.height * scale))),
                 Image.Resampling.LANCZOS)
    return image_id, {c.gtin for c in read_codes(np.asarray(g)) if c.gtin}


def resized_codes(demo_dir: Path, truth: dict, scale: float, workers: int) -> None:
    rows = list(csv.DictReader((demo_dir / "manifest.csv").open()))
    jobs = [(r["image_id"], str(demo_dir / r["uri"]), scale) for r in rows]
    with ProcessPoolExecutor(workers) as pool:
        got = dict(pool.map(_read_resized, jobs, chunksize=8))
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    wrong = 0
    for image_id, gtins in got.items():
        t = truth[image_id]
        wrong += bool(gtins - {t["printed_gtin"]})
        if t["printed_gtin"]:
            stats[t["symbology"]][0] += 1
            stats[t["symbology"]][1] += gtins == {t["printed_gtin"]}
    print(f"\ncodes after a {scale:.0%} resize (LANCZOS) of every demo picture")
    print("| symbology | printed | read exactly | share |")
    print("|---|---:|---:|---:|")
    for sym, (n, ok) in sorted(stats.items()):
        print(f"| {sym} | {n} | {ok} | {100 * ok / n:.1f} % |")
    print(f"wrong GTINs: {wrong}")


def code_set(workers: int) -> None:
    from npimage_demo.codeset import cases

    stats: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    by_rot: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for case in cases(seed=0):
        gray = np.asarray(Image.open(io.BytesIO(case.jpeg)).convert("L"))
        gtins = {c.gtin for c in read_codes(gray) if c.gtin}
        k = (case.symbology, case.module)
        stats[k][0] += 1
        stats[k][1] += gtins == {case.gtin}
        stats[k][2] += bool(gtins - {case.gtin})
        by_rot[(case.symbology, case.rotation)][0] += 1
        by_rot[(case.symbology, case.rotation)][1] += gtins == {case.gtin}
    print("\nrendered code set (zxing-cpp writer; 5 rotations x 3 JPEG qualities per cell)")
    print("| symbology | px/module | cases | read exactly | wrong GTIN |")
    print("|---|---:|---:|---:|---:|")
    for (sym, m), (n, ok, bad) in sorted(stats.items()):
        print(f"| {sym} | {m} | {n} | {ok} ({100 * ok / n:.0f} %) | {bad} |")
    print("| symbology | rotation | cases | read exactly |")
    print("|---|---:|---:|---:|")
    for (sym, r), (n, ok) in sorted(by_rot.items()):
        print(f"| {sym} | {r} | {n} | {ok} ({100 * ok / n:.0f} %) |")


def photo_costs(folder: Path, limit: int) -> None:
    """CPU ms per picture of read_image's steps and of read_codes on a folder of photos."""
    import hashlib

    from npimage.ingest.decode import decode_for_reading, read_bytes
    from npimage.reading.codes import bar_like
    from npimage.reading.stage import grey

    files = sorted(f for f in folder.iterdir() if f.is_file())[:limit]
    names = ("read", "sha256", "decode", "grey", "read_codes")
    spent = dict.fromkeys(names, 0.0)
    screened = with_gtin = 0
    for f in files:
        marks = [time.process_time()]
        data = read_bytes(str(f), 30.0)
        marks.append(time.process_time())
        hashlib.sha256(data).hexdigest()
        marks.append(time.process_time())
        rgb = np.asarray(decode_for_reading(data, 1 << 28).rgb)
        marks.append(time.process_time())
        gray = grey(rgb)
        marks.append(time.process_time())
        codes = read_codes(gray)
        marks.append(time.process_time())
        for name, a, b in zip(names, marks[:-1], marks[1:], strict=True):
            spent[name] += b - a
        with_gtin += any(c.gtin for c in codes)
        screened += bar_like(gray)
    n = max(1, len(files))
    print(f"\nphotos {folder}: {len(files)} pictures, {with_gtin} with a GTIN, "
          f"{screened} through the screen (bar_like); CPU ms per picture, one process")
    print("| " + " | ".join(names) + " | all |")
    print("|" + "---:|" * (len(names) + 1))
    print("| " + " | ".join(f"{1000 * spent[k] / n:.2f}" for k in names)
          + f" | {1000 * sum(spent.values()) / n:.2f} |")


def codes_only(demo_dir: Path, truth: dict, workers: int) -> None:
    """Codes' quality (native, 50 % resize, code set) and CPU images/s, without the runs."""
    rows = list(csv.DictReader((demo_dir / "manifest.csv").open()))
    for scale in (1.0, 0.5):
        pictures = []
        for r in rows:
            with Image.open(demo_dir / r["uri"]) as im:
                g = im.convert("L")
            if scale != 1.0:
                g = g.resize((max(1, round(g.width * scale)), max(1, round(g.height * scale))),
                             Image.Resampling.LANCZOS)
            pictures.append(np.asarray(g))
        t0 = time.process_time()
        for gray in pictures:
            read_codes(gray)
        cpu = time.process_time() - t0
        print(f"read_codes at {scale:.0%}: {len(pictures)} pictures, {cpu:.1f} s CPU, "
              f"{len(pictures) / cpu:.1f} images/s per process, "
              f"{1000 * cpu / len(pictures):.1f} ms per picture")
        resized_codes(demo_dir, truth, scale, workers)
    code_set(workers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "reading")
    ap.add_argument("--products", type=int, default=160)
    ap.add_argument("--variant-families", type=int, default=0,
                    help="look-alike families drawn (npimage demo draws 12)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fv", action="store_true", help="feature vectors on (slower signatures)")
    ap.add_argument("--codes-only", action="store_true",
                    help="only the code reader: quality at native size and 50 %%, code set, cost")
    ap.add_argument("--photos", type=Path, help="with --codes-only: also time a folder of photos")
    ap.add_argument("--photos-max", type=int, default=2000, help="pictures of --photos read")
    args = ap.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    demo = build_demo_catalogue(args.work / "demo", n_products=args.products,
                                variant_families=args.variant_families)
    truth = load_reading_truth(args.work / "demo" / "reading_truth.csv")
    if args.codes_only:
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
              f"demo {demo.n_images} images")
        codes_only(args.work / "demo", truth, args.workers)
        if args.photos:
            photo_costs(args.photos, args.photos_max)
        return 0
    base = args.work / "base.csv"
    n_base = _subset_manifest(demo.manifest, base, 0.9)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"demo {demo.n_images} images, backfill {n_base}, nightly +{demo.n_images - n_base}")
    settings = Settings().with_overrides(data_dir=args.work / "data", fv=args.fv)
    ctx = pipeline.settings_context("bench", str(base), "backfill",
                                    settings.with_overrides(read="codes,text-all"))
    t = timed_run(ctx, args.workers)
    _stage_table("backfill (full, --read codes,text-all)", t, n_base,
                 _count(ctx.run_dir, "codes"), _count(ctx.run_dir, "text"))
    ev = evaluate_reading(settings.warehouse_path, "bench", truth)
    ctx2 = pipeline.settings_context("bench", str(demo.manifest), "nightly",
                                     settings.with_overrides(read="codes,text"),
                                     mode="incremental")
    t2 = timed_run(ctx2, args.workers)
    _stage_table("nightly (incremental, --read codes,text)", t2, demo.n_images - n_base,
                 _count(ctx2.run_dir, "codes"), _count(ctx2.run_dir, "text"))
    plan = json.loads((ctx2.run_dir / "reading" / "text_plan" / "plan.json").read_text()) \
        if (ctx2.run_dir / "reading" / "text_plan" / "plan.json").exists() else {}
    print(f"nightly OCR plan: {plan}")
    print("\nquality on the backfill (codes at native size, OCR of every picture)")
    print(format_reading(ev))
    for image_id, printed, found in ev.strength_misses[:15]:
        print(f"  strength miss {image_id}: printed {printed!r}, read {found!r}")
    for row in ev.wrong_rows:
        print(f"  WRONG GTIN {row}")
    ev2 = evaluate_reading(settings.warehouse_path, "bench", truth)
    print("\nafter the nightly (all images of the catalogue)")
    print(format_reading(ev2))
    resized_codes(args.work / "demo", truth, 0.5, args.workers)
    code_set(args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
