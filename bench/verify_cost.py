"""Cost of the verify stage, old code against new (issue #12 cost target, issue #15).

Builds (once, cached as pickles under --work) the pair sets the verdicts are compared on:

- demo seed 0 and seed 1: the pairs compare sent to verification (bench/verify.py's demo
  runs, FV on);
- photos: bench/verify.py's photo edits (grocery + pdq, photo seed 2);
- grocery run: the pairs `pairs_to_verify` takes from an `npimage run` (FV on) of a folder
  of grocery photos (--grocery, e.g. /tmp/g2000), split by how they came in (score >=
  VERIFY_FROM, or only through the FV cosine).

Then, for each set: the verdicts (score >= 0.95 after `combine`, cap, floor, reason, and the
verified score itself) of the code at git revision --old and of the working tree, the
number of differences, and the CPU time per pair of `verify_pairs` on one thread
(time.process_time, old and new alternating, best of --repeat), and with --threads 2 the
wall time on one and two threads.

    PYTHONPATH=plugins .venv/bin/python bench/verify_cost.py [--old HEAD] [--sets demo0 demo1
        photos grocery] [--limit 1024] [--repeat 3] [--threads] [--grocery /tmp/g2000]
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def _load(rev: str, name: str, module: str) -> types.ModuleType | None:
    """plugins/npimage/matching/<name>.py as it was at git revision `rev`, as `module` (its
    kernels compiled afresh, its import of verify_kernels pointed at that revision's)."""
    got = subprocess.run(["git", "-C", str(REPO), "show",
                          f"{rev}:plugins/npimage/matching/{name}.py"],
                         capture_output=True, text=True)
    if got.returncode != 0:
        return None
    src = got.stdout.replace("cache=True", "cache=False").replace(
        "npimage.matching.verify_kernels", "verify_kernels_old")
    mod = types.ModuleType(module)
    mod.__file__ = f"<{name}.py at {rev}>"
    sys.modules[module] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def old_module(rev: str) -> types.ModuleType:
    """npimage.matching.verify (and its kernels) as at git revision `rev`."""
    _load(rev, "verify_kernels", "verify_kernels_old")
    mod = _load(rev, "verify", "verify_old")
    assert mod is not None
    return mod


def _demo(work: Path, seed: int) -> dict:
    import verify as B  # bench/verify.py

    data, truth = B.demo_run(work, seed, 160, 12)
    labels, score, da, db = B.demo_pairs(data, truth)
    return {"labels": list(labels), "score": score, "da": da, "db": db}


def _photos(datasets: Path, n: int, seed: int) -> dict:
    """bench/verify.py's photo edits (same sources and edits), as pairs."""
    import verify as B
    from PIL import Image

    from npimage.ingest.decode import decode
    from npimage.matching import detail as D

    rng = np.random.default_rng(seed)
    labels, da, db = [], [], []
    for path in B._photo_sources(datasets, n, seed):
        with Image.open(path) as im:
            img = im.convert("RGB")
        src = D.detail_signature(decode(B._jpeg(img, 95), 10**9).rgb)
        for kind, data in B.photo_edits(img, rng):
            labels.append(kind)
            da.append(src)
            db.append(D.detail_signature(decode(data, 10**9).rgb))
    pdq = datasets / "pdq-edits"
    orig = pdq / "bridge-mods" / "aaa-orig.jpg"
    if orig.exists():
        src = D.detail_signature(decode(orig.read_bytes(), 10**9).rgb)
        for f in sorted((pdq / "bridge-mods").iterdir()) + sorted((pdq / "modes").iterdir()):
            if f == orig or f.suffix.lower() not in (".jpg", ".png", ".webp", ".jpeg"):
                continue
            labels.append(f"pdq {f.parent.name}")
            da.append(src)
            db.append(D.detail_signature(decode(f.read_bytes(), 10**9).rgb))
    return {"labels": labels, "score": np.ones(len(da), np.float32), "da": da, "db": db}


def _grocery(work: Path, folder: Path) -> dict:
    """Pairs an `npimage run` (FV on, reading off) of `folder` sends to verification."""
    import pyarrow as pa

    from npimage.matching import compare as cmp
    from npimage.matching import verify as V
    from npimage.storage.parquet_io import read_table

    data = work / f"grocery-{folder.name}"
    if not data.exists():
        npimage = Path(sys.executable).with_name("npimage")
        subprocess.run([str(npimage), "run", "--client", "bench", "--source", str(folder),
                        "--data-dir", str(data), "--no-report", "--read", "none", "--timings"],
                       check=True)
    run = sorted((data / "clients" / "bench" / "runs").iterdir())[-1]
    matches = pa.concat_tables([read_table(p, cmp.MATCH_COLUMNS)
                                for p in sorted((run / "matches").glob("shard-*.parquet"))])
    pairs = V.pairs_to_verify(matches)
    sigs = pa.concat_tables([read_table(p, columns=["image_id", "detail"])
                             for p in sorted((run / "signatures").glob("shard-*.parquet"))])
    det = dict(zip(sigs["image_id"].to_pylist(), sigs["detail"].to_pylist(), strict=True))
    a, b = pairs["a"].to_pylist(), pairs["b"].to_pylist()
    score = pairs["score"].to_numpy(zero_copy_only=False).astype(np.float32)
    labels = ["score >= VERIFY_FROM" if s >= V.VERIFY_FROM else "FV only" for s in score]
    return {"labels": labels, "score": score, "da": [det[x] for x in a],
            "db": [det[x] for x in b], "a": a, "b": b}


def pair_set(name: str, args: argparse.Namespace) -> dict:
    """A pair set by name, built once and kept as a pickle under --work. `<set>-fv`: the
    same pairs as if each had come in by its FV cosine alone (score 0.87 < VERIFY_FROM:
    only a floor can change them, the fine pass is skipped for the far ones)."""
    if name.endswith("-fv"):
        got = dict(pair_set(name[:-3], args))
        got["score"] = np.full(len(got["da"]), 0.87, np.float32)
        return got
    cache = args.work / f"pairs-{name}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    if name.startswith("demo"):
        got = _demo(args.work, int(name[4:]))
    elif name == "photos":
        got = _photos(args.datasets, 150, 2)
    elif name == "grocery":
        got = _grocery(args.work, args.grocery)
    else:
        raise SystemExit(f"unknown set {name}")
    cache.write_bytes(pickle.dumps(got))
    return got


def verdicts(mod: types.ModuleType, s: dict, threads: int = 1) -> tuple[np.ndarray, ...]:
    """(>= 0.95 after verification, cap, floor, reason, verified score) of every pair, by
    `mod`'s visual check as verify_pairs runs it."""
    score = np.asarray(s["score"], np.float32)
    res: list = []

    shipped = mod.visual

    def keep(da, db, **kw):  # what verify_pairs gives the visual check (kw: lift_only)
        r = shipped(da, db, **kw)
        res.append(r)
        return r

    mod.visual = keep
    try:
        out, _ = mod.verify_pairs(score, s["da"], s["db"], checks=[keep], threads=threads)
    finally:
        mod.visual = shipped
    cap = np.concatenate([r.cap for r in res]) if res else np.zeros(0)
    floor = np.concatenate([r.floor for r in res]) if res else np.zeros(0)
    reason = np.concatenate([r.reason for r in res]) if res else np.zeros(0, object)
    return out >= 0.95, cap, floor, reason, out


def timed(mod: types.ModuleType, s: dict, k: int, threads: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per pair of one verify_pairs call over the first k pairs."""
    score = np.asarray(s["score"][:k], np.float32)
    w0, c0 = time.perf_counter(), time.process_time()
    mod.verify_pairs(score, s["da"][:k], s["db"][:k], threads=threads)
    return (time.process_time() - c0) / k * 1000, (time.perf_counter() - w0) / k * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "verify")
    ap.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--grocery", type=Path, default=Path("/tmp/g2000"))
    ap.add_argument("--old", default="HEAD", help="git revision of the old code")
    ap.add_argument("--sets", nargs="+", default=["demo0", "demo1", "photos"])
    ap.add_argument("--limit", type=int, default=1024, help="pairs timed per set")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", action="store_true", help="also wall time on 1 and 2 threads")
    ap.add_argument("--no-verdicts", action="store_true")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    from npimage.matching import verify as new

    old = old_module(args.old)
    print(f"old: {args.old}, load {os.getloadavg()[0]:.1f}")
    for name in args.sets:
        s = pair_set(name, args)
        n = len(s["da"])
        labels = np.array(s["labels"], dtype=object)
        print(f"\n{name}: {n} pairs", flush=True)
        if not args.no_verdicts:
            vo, vn = verdicts(old, s), verdicts(new, s)
            names = ("score >= 0.95", "cap", "floor", "reason", "verified score")
            diff = np.zeros(n, bool)
            for nm, x, y in zip(names, vo, vn, strict=True):
                d = x != y
                diff |= d
                print(f"  differences in {nm}: {int(d.sum())}")
            for i in np.flatnonzero(diff)[:20]:
                print(f"    {i} {labels[i]}: {vo[3][i]!r} cap {vo[1][i]} floor {vo[2][i]} -> "
                      f"{vn[3][i]!r} cap {vn[1][i]} floor {vn[2][i]}")
            for lab in dict.fromkeys(labels):
                m = labels == lab
                print(f"  {lab}: {int(m.sum())} pairs, >= 0.95 old {int(vo[0][m].sum())} "
                      f"new {int(vn[0][m].sum())}, capped {int((vn[1][m] < 1).sum())}, "
                      f"lifted {int((vn[2][m] > 0).sum())}")
        k = min(n, args.limit)
        best = {"old": (1e9, 1e9), "new": (1e9, 1e9)}
        for _ in range(args.repeat):
            for tag, mod in (("old", old), ("new", new)):
                best[tag] = min(best[tag], timed(mod, s, k, 1))
        print(f"  verify_pairs 1 thread, {k} pairs, CPU ms/pair (best of {args.repeat}): "
              f"old {best['old'][0]:.2f} -> new {best['new'][0]:.2f}  "
              f"(wall {best['old'][1]:.2f} -> {best['new'][1]:.2f}), "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        if args.threads:
            for tag, mod in (("old", old), ("new", new)):
                w = {t: min(timed(mod, s, k, t)[1] for _ in range(args.repeat)) for t in (1, 2)}
                print(f"  {tag}: wall ms/pair 1 thread {w[1]:.2f}, 2 threads {w[2]:.2f} "
                      f"({w[1] / w[2]:.2f}x), load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
