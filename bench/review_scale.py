"""How the review application scales: load a synthetic warehouse of N images, time pages.

Reuses bench/report_scale.py's synthetic warehouse (N images in ~N/3 products, 0-10
nearest images each with random scores in the bands, 0-4 matching products per product,
800 px JPEGs from a shared pool) plus the signatures and runs tables the app reads. Random
pairs make a worst case for groups: a quarter of the pairs are same/retouched, so one
giant component forms. Then, through FastAPI's TestClient (no network), it times:
load = building the queue (groups by vectorised union-find, pairs, images; once per
published run), and one request each of the overview, the largest group's first page,
a pair page (two full decodes + keep suggestion), the difference overlay, a decision
(appended to the log).

    .venv/bin/python bench/review_scale.py                 # 1 000, 10 000 and 100 000
    .venv/bin/python bench/review_scale.py --images 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from report_scale import CLIENT, POOL, RUN, build_warehouse, picture_pool, synthetic_tables

from npimage.review.data import load_queue
from npimage.review.serve import standalone_app


def add_review_tables(warehouse: Path) -> None:
    """Signatures (pixel sizes) and a runs row, as a publish leaves them."""
    with duckdb.connect(str(warehouse)) as con:
        con.execute("CREATE TABLE signatures AS SELECT client_id, image_id, size_bytes, "
                    "800 AS width, 800 AS height FROM images")
        con.execute("CREATE TABLE runs AS SELECT ? AS client_id, ? AS run_id, "
                    "now() AS published_at", [CLIENT, RUN])


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(n: int, work: Path, pool: list[tuple[str, int]]) -> str:
    from fastapi.testclient import TestClient

    data = work / f"data-{n}"
    data.mkdir(parents=True, exist_ok=True)
    warehouse = data / "warehouse.duckdb"
    warehouse.unlink(missing_ok=True)
    build_warehouse(warehouse, synthetic_tables(n, pool))
    add_review_tables(warehouse)
    load, q = timed(lambda: load_queue(warehouse, data, CLIENT))
    c = TestClient(standalone_app(data, CLIENT, user="bench"))
    p = q.pairs[len(q.groups[0].pairs) + 1] if len(q.groups) > 1 else q.pairs[0]
    timed(lambda: c.get(f"/c/{CLIENT}"))  # builds the app's cache
    overview, r1 = timed(lambda: c.get(f"/c/{CLIENT}"))
    group, r2 = timed(lambda: c.get(f"/c/{CLIENT}/group/0"))  # the largest
    pair, r3 = timed(lambda: c.get(f"/c/{CLIENT}/pair", params={
        "kind": p.kind, "a": p.item_id, "b": p.match_id}))
    diff, r4 = timed(lambda: c.get(f"/c/{CLIENT}/diff", params={"a": p.image_a, "b": p.image_b}))
    decide, r5 = timed(lambda: c.post(f"/c/{CLIENT}/decisions", json={
        "kind": p.kind, "item_id": p.item_id, "match_id": p.match_id, "decision": "skip"}))
    assert all(r.status_code == 200 for r in (r1, r2, r3, r4, r5))
    sizes = np.array([len(g.images) for g in q.groups])
    return (f"| {n:>7} | {len(q.pairs):>8} | {len(q.groups):>6} | {sizes.max():>7} "
            f"| {load:>6.2f} | {overview * 1000:>11.0f} | {group * 1000:>8.0f} "
            f"| {pair * 1000:>7.0f} | {diff * 1000:>7.0f} | {decide * 1000:>9.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="*", default=[1000, 10000, 100000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="npimage-review-bench-") as tmp:
        work = Path(tmp)
        pool = picture_pool(work / "pool", POOL, np.random.default_rng(0))
        print("| images  | pairs    | groups | largest | load s | overview ms | group ms "
              "| pair ms | diff ms | decide ms |")
        print("|---------|----------|--------|---------|--------|-------------|----------"
              "|---------|---------|-----------|")
        for n in args.images:
            print(run(n, work, pool), flush=True)


if __name__ == "__main__":
    main()
