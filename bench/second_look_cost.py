"""Cost of the second look at stickers (npimage.matching.second_look), 1 thread vs 2.

Builds sticker pairs from grocery photos (../shared/datasets) as bench/verify.py does, then
times `stickers` on them with verify.THREADS = 1 and 2, twice each, and prints wall and CPU
milliseconds per pair and how many pairs it forgives (the same on every round).

    .venv/bin/python bench/second_look_cost.py [--photos 120] [--seed 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "bench")]


def main() -> int:
    from npimage_demo.catalogue import _sticker
    from PIL import Image
    from verify import _jpeg, _photo_sources  # bench/verify.py

    from npimage.ingest.decode import decode
    from npimage.ingest.thumbnail import thumbnail_jpeg
    from npimage.matching import detail as D
    from npimage.matching import second_look as S
    from npimage.matching import verify as V

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=120)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    args = ap.parse_args()
    if not (args.datasets / "grocery-store").exists():
        print(f"grocery photos not found under {args.datasets}", file=sys.stderr)
        return 1
    rng = np.random.default_rng(args.seed)
    da: list[bytes] = []
    db: list[bytes] = []
    ta: list[bytes | None] = []
    tb: list[bytes | None] = []
    for path in _photo_sources(args.datasets, args.photos, args.seed):
        with Image.open(path) as im:
            img = im.convert("RGB")
        for pic, dl, tl in ((img, da, ta), (_sticker(img, rng), db, tb)):
            rgb = decode(_jpeg(pic, 92), 10**9).rgb
            dl.append(D.detail_signature(rgb))
            tl.append(thumbnail_jpeg(rgb))
    print(f"{len(da)} sticker pairs")
    for threads in (1, 2, 1, 2):
        V.THREADS = threads
        t0, c0 = time.perf_counter(), time.process_time()
        got = S.stickers(da, db, ta, tb)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"threads {threads}: wall {1000 * wall / len(da):.2f} ms/pair, CPU "
              f"{1000 * cpu / len(da):.2f}, forgiven {int(got.sum())}, "
              f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
