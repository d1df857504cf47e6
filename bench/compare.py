"""Speed, memory and recall of the compare stage at scale, on synthetic signatures.

Generates M catalogue signatures (random 64-bit hashes, random sha256 prefixes and,
with FV, random 1280-d unit vectors stored float16 as the pipeline stores them); the
queries are the last N of them, the day's new images (N = M: all-vs-all, a backfill).
Some queries are planted near-duplicates of older images at known distances:

    kind          bits flipped per hash   FV cosine   expected band
    copy          same bytes              1.0         same (1.0)
    recompressed  2                       0.99        same
    retouched     8                       0.95        retouched
    very_similar  14                      0.90        very_similar
    similar       20                      0.85        similar
    below         28                      0.60        none (must not be found)

Then it runs the project's real npimage.matching.compare.compare on them (no image decoding),
and checks it against exact brute force (every pair scored with Scorer.score, in NumPy)
on a sample of queries, half planted, half random. It prints a table: time, pairs/s,
peak RSS during compare, recall on the sample, planted pairs found, and the POC's time
for the same number of pairs (extrapolated from its own figures: without FV
1000 x 1000 in 74 s, i.e. 13 514 pairs/s; with FV one query against 100 000 in 5 s,
i.e. 20 000 pairs/s). The last line is one JSON object.

    .venv/bin/python bench/compare.py --n 10000 --m 1000000            # nightly, FV
    .venv/bin/python bench/compare.py --n 100000 --m 100000 --no-fv    # backfill
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npimage.bands import round_scores
from npimage.matching import bf16
from npimage.matching import compare as cmp
from npimage.matching.scoring import Scorer, load_weights

POC_PAIRS_PER_S = {False: 1000 * 1000 / 74.0, True: 100_000 / 5.0}
#: (kind, bits flipped in each hash, FV cosine); None bits = identical bytes.
PLANTS: tuple[tuple[str, int | None, float], ...] = (
    ("copy", None, 1.0), ("recompressed", 2, 0.99), ("retouched", 8, 0.95),
    ("very_similar", 14, 0.90), ("similar", 20, 0.85), ("below", 28, 0.60),
)
FV_CHUNK = 65536
#: The POC's weights, and hash curves with knots at the bands' limits (32, 22, 16, 11 and 4
#: bits): a fixed reference for figures, whatever the shipped default becomes.
POC_WEIGHTS = {"dah": 0.15, "ddh": 0.30, "dph": 0.25, "dfv": 0.30}
POC_HASH_CURVE = [[0.0, 0.0], [0.5, 0.5], [42 / 64, 0.82], [48 / 64, 0.90], [53 / 64, 0.95],
                  [60 / 64, 0.99], [1.0, 1.0]]


def poc_weights_file() -> str:
    """A temporary JSON weights file of the POC's weights and curves (for --weights poc)."""
    doc = {"weights": POC_WEIGHTS,
           "curves": {"dah": POC_HASH_CURVE, "ddh": POC_HASH_CURVE, "dph": POC_HASH_CURVE,
                      "dfv": [[0.0, 0.0], [1.0, 1.0]]}}
    path = Path(tempfile.gettempdir()) / "npimage-bench-poc-weights.json"
    path.write_text(json.dumps(doc))
    return str(path)


@dataclass
class Synthetic:
    """A synthetic catalogue, which of its rows are queries, and the planted pairs."""

    catalogue: cmp.SignatureArrays
    query_idx: np.ndarray  # catalogue indices of the queries (the last N rows)
    planted_q: np.ndarray  # catalogue index of each planted copy (a query)
    planted_src: np.ndarray  # catalogue index of its original
    planted_kind: np.ndarray  # index into PLANTS


def _unit_f16(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def _flip_bits(rng: np.random.Generator, count: int, bits: int) -> np.ndarray:
    """(count, 3) uint64 masks with exactly `bits` set bits in each hash."""
    keys = rng.random((count * 3, 64)).argsort(axis=1)[:, :bits].astype(np.uint64)
    masks = np.bitwise_or.reduce(np.uint64(1) << keys, axis=1) if bits else np.zeros(
        count * 3, np.uint64)
    return masks.reshape(count, 3)


def generate(n: int, m: int, dim: int | None, seed: int, planted_share: float) -> Synthetic:
    """Random signatures with planted near-duplicates (see the module docstring)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=(m, 3), dtype=np.int64).view(np.uint64)
    hashes ^= rng.integers(0, 2, size=(m, 3), dtype=np.int64).view(np.uint64) << np.uint64(63)
    sha = rng.integers(-2**63, 2**63 - 1, size=m, dtype=np.int64)
    size = rng.integers(10_000, 2_000_000, size=m, dtype=np.int64)
    fv = None
    if dim:
        fv = np.empty((m, dim), np.float16)
        for s in range(0, m, FV_CHUNK):
            e = min(m, s + FV_CHUNK)
            fv[s:e] = _unit_f16(rng.standard_normal((e - s, dim), dtype=np.float32))
    query_idx = np.arange(m - n, m)
    n_plant = min(n, max(len(PLANTS), int(planted_share * n)))
    planted_q = rng.choice(query_idx, n_plant, replace=False)
    # originals: older images (all-vs-all: images that are not copies themselves)
    pool = np.arange(m - n) if m > n else np.setdiff1d(np.arange(m), planted_q)
    planted_src = rng.choice(pool, n_plant)
    planted_kind = np.arange(n_plant) % len(PLANTS)
    for k, (_, bits, cos) in enumerate(PLANTS):
        sel = planted_kind == k
        q, s = planted_q[sel], planted_src[sel]
        if bits is None:
            hashes[q], sha[q], size[q] = hashes[s], sha[s], size[s]
        else:
            hashes[q] = hashes[s] ^ _flip_bits(rng, len(q), bits)
        if fv is not None:
            src = fv[s].astype(np.float32)
            src /= np.linalg.norm(src, axis=1, keepdims=True)
            noise = rng.standard_normal(src.shape, dtype=np.float32)
            noise -= np.sum(noise * src, axis=1, keepdims=True) * src
            noise /= np.linalg.norm(noise, axis=1, keepdims=True)
            fv[q] = _unit_f16(cos * src + np.sqrt(max(0.0, 1 - cos * cos)) * noise)
    ids = np.array([f"img{i:08d}" for i in range(m)], dtype=object)
    catalogue = cmp.SignatureArrays(ids, np.arange(m, dtype=np.int64), sha, size, hashes, fv)
    return Synthetic(catalogue, query_idx, planted_q, planted_src, planted_kind)


def brute_force(cat: cmp.SignatureArrays, q_idx: np.ndarray, scorer: Scorer, top_k: int,
                threshold: float) -> set[tuple[int, int]]:
    """Exact top-k pairs (query idx, catalogue idx) of the sampled queries, every pair scored.

    Independent of npimage.matching.compare's candidate code: Scorer.score on the full distance
    matrix of each catalogue block, cosines by a matrix product.
    """
    q = cat.take(q_idx)
    qu = None
    if scorer.use_fv:
        qf = q.fv.astype(np.float32)
        qu = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    found_q, found_c, found_s = [], [], []
    for s in range(0, len(cat), FV_CHUNK):
        c = cat.slice(s, s + FV_CHUNK)
        ham = np.bitwise_count(q.hashes[:, None, :] ^ c.hashes[None, :, :])
        cos = None
        if qu is not None:
            cf = c.fv.astype(np.float32)
            cos = qu @ (cf / np.linalg.norm(cf, axis=1, keepdims=True)).T
        score = scorer.score(ham, cos).astype(np.float32)
        score[(q.sha[:, None] == c.sha[None, :]) & (q.size[:, None] == c.size[None, :])] = 1.0
        score[q.rows[:, None] == c.rows[None, :]] = -1.0
        score = round_scores(score)
        qi, ci = np.nonzero(score >= threshold)
        found_q.append(qi)
        found_c.append(ci + s)
        found_s.append(score[qi, ci])
    qi, ci, sc = (np.concatenate(x) for x in (found_q, found_c, found_s))
    sel = cmp.top_k_per_query(qi, ci, sc, top_k)
    return set(zip(q_idx[qi[sel]].tolist(), ci[sel].tolist(), strict=True))


class PeakRss:
    """Samples this process's resident memory in a thread; `peak_mb` after the block."""

    def __init__(self, every: float = 0.05) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every)

    def __enter__(self) -> PeakRss:
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def machine() -> str:
    """One line about the machine and how busy it was (the figures depend on it)."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    return (f"{platform.machine()} {cpu}, {len(os.sched_getaffinity(0))} cores, "
            f"load average {load:.1f} at start")


def main(argv: list[str] | None = None) -> int:
    """Generate, compare, check against brute force, print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, required=True, help="query images (the last N)")
    ap.add_argument("--m", type=int, required=True, help="catalogue images (N = M: all-vs-all)")
    ap.add_argument("--no-fv", action="store_true", help="hashes only")
    ap.add_argument("--dim", type=int, default=1280, help="FV length (default 1280)")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.82)
    ap.add_argument("--weights", help="JSON weights file (default: the shipped default), "
                                      "or 'poc': the POC's weights and band-calibrated curves")
    ap.add_argument("--sample", type=int, default=200, help="queries checked by brute force")
    ap.add_argument("--planted", type=float, default=0.02, help="share of planted queries")
    ap.add_argument("--dense", action="store_true",
                    help="force the dense path (every tile scored as matrices): worst case")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time compare this many times, report the median (small N x M)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not 0 < args.n <= args.m:
        ap.error("need 0 < N <= M")
    fv = not args.no_fv
    if args.dense:
        cmp.SPARSE_MAX_DENSITY = {True: 0.0, False: 0.0}
    print(f"machine: {machine()}", flush=True)
    t0 = time.perf_counter()
    syn = generate(args.n, args.m, args.dim if fv else None, args.seed, args.planted)
    gen_s = time.perf_counter() - t0
    cat = syn.catalogue
    queries = cat if args.n == args.m else cat.take(syn.query_idx)
    scorer = Scorer(load_weights(poc_weights_file() if args.weights == "poc" else args.weights),
                    fv)
    print(f"weights: {args.weights or 'shipped default'}: "
          + ", ".join(f"{k} {v:.3g}" for k, v in scorer.weights.items()), flush=True)
    bound = cmp.hash_bound(scorer, args.threshold)
    print(f"generated {args.m} signatures in {gen_s:.1f}s; hash bound: shifts {bound.shifts} "
          f"bound {bound.bound}, random pairs feasible {bound.random_rate:.2e}", flush=True)

    t0 = time.perf_counter()
    cmp.compare(cat.take(np.arange(4)), cat.take(np.arange(4096)), scorer, top_k=args.top_k,
                threshold=args.threshold)
    print(f"warm-up (Numba kernel compiled or loaded from its cache): "
          f"{time.perf_counter() - t0:.2f}s", flush=True)
    dense_fv = fv and bound.random_rate > cmp.SPARSE_MAX_DENSITY[True]
    print("dense cosines: " + ("bfloat16 (npimage.matching.bf16, TensorFlow's import counted)"
                               if dense_fv and bf16.wanted(args.n * args.m) else "float32")
          + f" (NPIMAGE_COMPARE_BF16={bf16.setting()})", flush=True)
    times, cpus = [], []
    with PeakRss() as mem:
        for _ in range(max(1, args.repeat)):
            t0, c0 = time.perf_counter(), time.process_time()
            table = cmp.compare(queries, cat, scorer, top_k=args.top_k,
                                threshold=args.threshold)
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    seconds, cpu = float(np.median(times)), float(np.median(cpus))
    pairs = args.n * args.m

    found = {(int(a[3:]), int(b[3:])) for a, b in zip(
        table["image_id"].to_pylist(), table["match_image_id"].to_pylist(), strict=True)}

    rng = np.random.default_rng(args.seed + 1)
    expected = syn.planted_q[syn.planted_kind != len(PLANTS) - 1]
    half = min(len(expected), args.sample // 2)
    sample = np.unique(np.concatenate([
        rng.choice(expected, half, replace=False),
        rng.choice(syn.query_idx, min(args.n, args.sample - half), replace=False)]))
    t0 = time.perf_counter()
    truth = brute_force(cat, sample, scorer, args.top_k, args.threshold)
    brute_s = time.perf_counter() - t0
    sampled = set(sample.tolist())
    in_sample = {p for p in found if p[0] in sampled}
    recall = len(truth & in_sample) / len(truth) if truth else 1.0
    extra = len(in_sample - truth)

    poc = pairs / POC_PAIRS_PER_S[fv]
    print()
    print("| work | N | M | FV | top-k | seconds | CPU s | pairs/s | peak RSS MB "
          "| recall (sample) | POC (extrapolated) | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {'all-vs-all' if args.n == args.m else 'N x M'} | {args.n} | {args.m} | "
          f"{'on' if fv else 'off'} | {args.top_k} | {seconds:.3g} | {cpu:.3g} | "
          f"{pairs / seconds:.3g} | "
          f"{mem.peak_mb:.0f} | {recall:.4f} ({len(truth)} pairs, {len(sample)} queries) | "
          f"{poc:,.1f} s | {poc / seconds:,.0f}x |")
    print()
    print(f"brute force on the sample: {brute_s:.1f}s, {len(truth)} pairs; compare found "
          f"{len(truth & in_sample)} of them and {extra} other(s); matches in all: "
          f"{table.num_rows}")
    print("| planted | count | found (both ways or one) |")
    print("|---|---|---|")
    for k, (kind, _, _) in enumerate(PLANTS):
        sel = syn.planted_kind == k
        pairs_k = zip(syn.planted_q[sel].tolist(), syn.planted_src[sel].tolist(), strict=True)
        hit = sum((q, s) in found or (s, q) in found for q, s in pairs_k)
        print(f"| {kind} | {int(sel.sum())} | {hit} |")
    print(json.dumps({"n": args.n, "m": args.m, "fv": fv, "seconds": round(seconds, 4),
                      "cpu_seconds": round(cpu, 2), "threads": cmp.compare_threads(),
                      "peak_rss_mb": round(mem.peak_mb), "recall": round(recall, 5),
                      "top_k": args.top_k, "pairs_per_s": round(pairs / seconds),
                      "poc_seconds": round(poc), "dense": args.dense,
                      "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          / 1024)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
