"""How the static report scales: render a synthetic warehouse of N images, twice.

Builds a DuckDB warehouse with the contracts' tables (npimage.schemas, plus run_id on
images): N images in ~N/3 products with GTIN-like ids, up to 10 nearest images each
(both directions are not enforced: the report does not need it), ~2 matching products
per product, 0.5 % rejects. Image files are a pool of real JPEGs drawn by Pillow that
the images share (each image still gets its own thumbnail, named by its id). The
signatures table carries each image's thumbnail as the signature stage stores it
(npimage.ingest.thumbnail of the pool picture's decode), except with --no-stored, which
leaves them out so the report decodes every image (the old way). Then it renders the
report twice: cold (every thumbnail written) and warm (thumbnails reused), and prints one
table row per size.

    .venv/bin/python bench/report_scale.py                 # 1 000, 10 000 and 100 000
    .venv/bin/python bench/report_scale.py --images 20000 --keep /tmp/report
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from npimage import schemas
from npimage.bands import BANDS, band_codes
from npimage.ingest.decode import decode
from npimage.ingest.thumbnail import thumbnail_jpeg
from npimage.report import render_report
from npimage.storage.parquet_io import conform

CLIENT = "bench"
RUN = "bench-run"
POOL = 300


def picture_pool(folder: Path, n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """`n` product-like JPEGs (a coloured shape on white); returns (path, size) of each."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        img = Image.new("RGB", (800, 800), "white")
        pen = ImageDraw.Draw(img)
        colour = tuple(int(c) for c in rng.integers(0, 230, 3))
        x, y = (int(v) for v in rng.integers(120, 260, 2))
        shape = (pen.ellipse, pen.rectangle, pen.rounded_rectangle)[k % 3]
        shape((x, y, 800 - x, 800 - y), fill=colour)
        pen.rectangle((x + 60, 380, 740 - x, 430), fill="white")
        path = folder / f"pool{k:04d}.jpg"
        img.save(path, "JPEG", quality=88)
        out.append((str(path), path.stat().st_size))
    return out


def _signatures(images: pa.Table, which: np.ndarray, pool: list[tuple[str, int]]) -> pa.Table:
    """client_id, image_id, sig_version and thumb of every image: the pool picture's
    thumbnail as the signature stage makes it."""
    thumbs = [thumbnail_jpeg(decode(Path(p).read_bytes(), 10**9).rgb) for p, _ in pool]
    return pa.table({
        "client_id": images["client_id"], "image_id": images["image_id"],
        "sig_version": pa.array(np.full(len(which), schemas.SIGNATURE_VERSION), pa.int16()),
        "thumb": pa.array([thumbs[i] for i in which], pa.binary()),
    })


def synthetic_tables(n: int, pool: list[tuple[str, int]], seed: int = 0,
                     stored: bool = True) -> dict[str, pa.Table]:
    """The warehouse tables of one client with `n` images, vectorised with NumPy."""
    rng = np.random.default_rng(seed)
    per_product = rng.integers(1, 6, size=n)  # 1-5 images per product
    product_of = np.repeat(np.arange(n), per_product)[:n]
    piece = np.arange(n) - np.searchsorted(product_of, product_of)
    gtin = 4006381000000 + product_of * 7
    product_ids = np.char.mod("%d", gtin)
    image_ids = np.char.add(np.char.add(product_ids, "_PIECE_"), np.char.zfill(
        np.char.mod("%d", piece + 1), 2))
    which = np.arange(n) % len(pool)
    uris = np.array([p for p, _ in pool], dtype=object)[which]
    sizes = np.array([s for _, s in pool])[which]
    stamp = datetime(2024, 5, 1, tzinfo=UTC)
    images = pa.table({
        "client_id": pa.array(np.full(n, CLIENT)),
        "image_id": pa.array(image_ids), "product_id": pa.array(product_ids),
        "reference": pa.array(product_ids), "uri": pa.array(uris, pa.string()),
        "size_bytes": pa.array(sizes, pa.int64()),
        "modified_at": pa.array(np.full(n, stamp), pa.timestamp("us", tz="UTC")),
        "run_id": pa.array(np.full(n, RUN)),
    })
    matches = _image_matches(image_ids, rng)
    products = _product_matches(np.unique(product_ids), rng)
    bad = rng.choice(n, size=max(1, n // 200), replace=False)
    rejects = pa.table({
        "client_id": pa.array(np.full(len(bad), CLIENT)), "image_id": pa.array(image_ids[bad]),
        "uri": pa.array(uris[bad], pa.string()), "stage": pa.array(np.full(len(bad), "decode")),
        "reason": pa.array(np.full(len(bad), "corrupt or truncated image")),
    })
    tables = {"images": images, "image_matches": matches, "product_matches": products,
              "rejects": rejects}
    if stored:
        tables["signatures"] = _signatures(images, which, pool)
    return tables


def _scored(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Scores in the bands and plausible components around them."""
    score = rng.uniform(BANDS[-1][1], 1.0, rows).astype(np.float32)
    comp = {c: np.clip(score + rng.normal(0, 0.03, rows), 0, 1).astype(np.float32)
            for c in ("dah", "ddh", "dph", "dfv")}
    return {"score": score, "band": band_codes(score), **comp}


def _image_matches(ids: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """0-10 nearest images per image (mean 5), ranked by score."""
    n = len(ids)
    k = rng.integers(0, 11, size=n)
    src = np.repeat(np.arange(n), k)
    dst = (src + rng.integers(1, n, size=len(src))) % n
    s = _scored(len(src), rng)
    order = np.lexsort((-s["score"], src))
    src, dst = src[order], dst[order]
    s = {c: v[order] for c, v in s.items()}
    rank = np.arange(len(src)) - np.searchsorted(src, src) + 1
    return conform(pa.table({
        "client_id": pa.array(np.full(len(src), CLIENT)), "image_id": pa.array(ids[src]),
        "match_image_id": pa.array(ids[dst]), "rank": pa.array(rank, pa.int32()),
        "score": s["score"], "band": pa.array(s["band"], pa.string()),
        "dah": s["dah"], "ddh": s["ddh"], "dph": s["dph"], "dfv": s["dfv"],
        "same_bytes": pa.array(s["score"] > 0.999), "run_id": pa.array(np.full(len(src), RUN)),
        "rejected": pa.array(np.zeros(len(src), bool)),
    }), schemas.IMAGE_MATCHES)


def _product_matches(pids: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """0-4 matching products per product."""
    n = len(pids)
    k = rng.integers(0, 5, size=n)
    src = np.repeat(np.arange(n), k)
    dst = (src + rng.integers(1, n, size=len(src))) % n
    s = _scored(len(src), rng)
    return conform(pa.table({
        "client_id": pa.array(np.full(len(src), CLIENT)), "product_id": pa.array(pids[src]),
        "match_product_id": pa.array(pids[dst]), "score": s["score"],
        "band": pa.array(s["band"], pa.string()),
        "n_image_pairs": pa.array(rng.integers(1, 4, len(src)), pa.int32()),
        "best_image_id": pa.array(np.char.add(pids[src], "_PIECE_01")),
        "best_match_image_id": pa.array(np.char.add(pids[dst], "_PIECE_01")),
        "run_id": pa.array(np.full(len(src), RUN)),
        "rejected": pa.array(np.zeros(len(src), bool)),
    }), schemas.PRODUCT_MATCHES)


def build_warehouse(path: Path, tables: dict[str, pa.Table]) -> None:
    with duckdb.connect(str(path)) as con:
        for name, table in tables.items():
            con.register("src", table)
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM src")
            con.unregister("src")


def measure(out: Path) -> tuple[int, float, float, float]:
    """(html pages, MB of pages + search index + assets, MB of thumbnails, largest page KB)."""
    pages = 0
    text_bytes = thumb_bytes = largest = 0
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        size = path.stat().st_size
        if path.suffix == ".jpg":
            thumb_bytes += size
        else:
            text_bytes += size
        if path.suffix == ".html":
            pages += 1
            largest = max(largest, size)
    return pages, text_bytes / 1e6, thumb_bytes / 1e6, largest / 1024


def run(n: int, work: Path, pool: list[tuple[str, int]], stored: bool = True) -> str:
    warehouse = work / f"warehouse-{n}.duckdb"
    out = work / f"report-{n}"
    shutil.rmtree(out, ignore_errors=True)
    warehouse.unlink(missing_ok=True)
    build_warehouse(warehouse, synthetic_tables(n, pool, stored=stored))
    t0 = time.perf_counter()
    marks: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        marks[stage] = time.perf_counter() - t0  # the last call of a stage: its end

    render_report(warehouse, CLIENT, out, progress)
    cold = time.perf_counter() - t0
    thumbs = marks.get("thumbnails", 0.0)
    t0 = time.perf_counter()
    render_report(warehouse, CLIENT, out)
    warm = time.perf_counter() - t0
    pages, text_mb, thumb_mb, largest = measure(out)
    return (f"| {n:>7} | {pages:>7} | {text_mb:>8.1f} | {thumb_mb:>9.1f} | {largest:>9.1f} "
            f"| {cold:>8.1f} | {thumbs:>8.1f} | {warm:>7.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="*", default=[1000, 10000, 100000])
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temp dir)")
    parser.add_argument("--no-stored", action="store_true",
                        help="no stored thumbnails: the report decodes every image")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="npimage-report-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    pool = picture_pool(work / "pool", POOL, np.random.default_rng(1))
    print("| images  | pages   | total MB | thumbs MB | largest KB | cold s   | of it thumbs s "
          "| warm s  |")
    print("|---------|---------|----------|-----------|------------|----------|----------|"
          "---------|")
    try:
        for n in args.images:
            print(run(n, work, pool, stored=not args.no_stored), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("total MB: HTML pages, search index and assets; thumbs MB: thumbnails (JPEG); "
          "cold: first render (every thumbnail written: "
          f"{'decoded' if args.no_stored else 'stored by the signature stage'}); "
          "warm: re-render (thumbnails reused).")


if __name__ == "__main__":
    main()
