"""Retrieval quality of dfv, of the hashes and of the combined score on look-alike products.

Data: ../shared/datasets/grocery-store/dataset/train/Packages - smartphone photos of 31
packaged products (juice, milk, yoghurt... cartons that look alike); two photos are of the
"same class" when they show the same product (same leaf folder). Every photo queries all
the others (leave-one-out). Metrics, averaged over queries:

- recall@1: the nearest other photo is of the same product;
- precision@10: share of same-product photos among the 10 nearest.

Scores: dfv = max(cosine, 0) of the FV (stored as float16, as the signature stage does);
hashes = weighted mean of dah, ddh, dph; combined = weighted mean of all four (weights of
npimage.matching.scoring, or --weights FILE). --sweep adds the combined score with dfv given other
shares of the total weight (the hash weights keep their ratios). --engine picks the FV
engine (npimage.fv.tflite); --engines E1,E2,... adds a table comparing engines on the same
decoded photos: recall@1 and precision@10 of dfv and of the combined score, and the least
and median cosine of each engine's vectors with the first engine's. Usage:

    .venv/bin/python bench/fv_quality.py [--data DIR] [--model SPEC] [--fit pad|squash|crop]
                                         [--weights FILE] [--sweep] [--engine E]
                                         [--engines tf,tflite-fp32,tflite-fp16,tflite-int8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from npimage.fv.models import FITS, load
from npimage.ingest.decode import decode
from npimage.matching.hashing import image_hashes, similarity
from npimage.matching.scoring import Weights, load_weights

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared/datasets/grocery-store/dataset/train/Packages"


def photos(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Every .jpg under `root`, its class index (leaf folder) and the class names."""
    paths = sorted(root.rglob("*.jpg"))
    names = sorted({p.parent.name for p in paths})
    index = {n: i for i, n in enumerate(names)}
    return paths, np.array([index[p.parent.name] for p in paths]), names


def vectors(decoded: list, spec: str, cache: Path, fit: str,
            engine: str | None = None) -> tuple[np.ndarray, str]:
    """(fv float32 (n, d) through float16 as stored, model id) of decoded pictures."""
    extractor = load(spec, cache, fit, engine=engine)
    fv = extractor.embed(decoded).astype(np.float16).astype(np.float32)
    fv /= np.linalg.norm(fv, axis=1, keepdims=True)
    return fv, extractor.model_id


def signatures(paths: list[Path], spec: str, cache: Path, fit: str, engine: str | None = None):
    """(hashes uint64 (n, 3), fv float32 (n, d) via float16, model id, decoded pictures)."""
    decoded = [decode(p.read_bytes(), 250_000_000).rgb for p in paths]
    hashes = np.array([image_hashes(img) for img in decoded], dtype=np.int64).view(np.uint64)
    fv, model_id = vectors(decoded, spec, cache, fit, engine)
    return hashes, fv, model_id, decoded


def engines_table(decoded: list, hashes: np.ndarray, labels: np.ndarray, weights: Weights,
                  args: argparse.Namespace) -> None:
    """Print the --engines table: retrieval per engine and agreement with the first."""
    print("\n| engine (model id) | dfv recall@1 | dfv precision@10 | combined recall@1 "
          "| combined precision@10 | cosine vs first: min | median |")
    print("|---|---|---|---|---|---|---|")
    first = None
    for engine in args.engines.split(","):
        fv, model_id = vectors(decoded, args.model, args.cache, args.fit, engine)
        first = fv if first is None else first
        cos = (fv * first).sum(axis=1)
        mats = score_matrices(hashes, fv, weights)
        (r1, p10), (c1, c10) = retrieval(mats["dfv"], labels), retrieval(mats["combined"], labels)
        print(f"| {engine} (`{model_id}`) | {r1:.3f} | {p10:.3f} | {c1:.3f} | {c10:.3f} "
              f"| {cos.min():.4f} | {np.median(cos):.5f} |", flush=True)


def score_matrices(hashes: np.ndarray, fv: np.ndarray, weights) -> dict[str, np.ndarray]:
    """All-pairs score matrices: dfv alone, the hashes alone, and the combined score."""
    comps = {
        name: similarity(hashes[:, j, None], hashes[None, :, j])
        for j, name in enumerate(("dah", "ddh", "dph"))
    }
    comps["dfv"] = np.maximum(fv @ fv.T, 0.0)
    out = {"dfv": comps["dfv"]}
    for label, use_fv in (("hashes", False), ("combined", True)):
        w = weights.normalised(use_fv)
        out[label] = sum(np.float32(w[c]) * comps[c] for c in w)
    return out


def with_fv_share(weights: Weights, share: float) -> Weights:
    """`weights` rescaled so that dfv has `share` of the total, hash ratios unchanged."""
    hashes = weights.normalised(use_fv=False)
    rest = 1.0 - share
    return Weights(dah=hashes["dah"] * rest, ddh=hashes["ddh"] * rest,
                   dph=hashes["dph"] * rest, dfv=share, source=f"dfv share {share:g}")


def retrieval(score: np.ndarray, labels: np.ndarray, k: int = 10) -> tuple[float, float]:
    """(recall@1, precision@k) of leave-one-out nearest-neighbour retrieval."""
    s = score.astype(np.float64, copy=True)
    np.fill_diagonal(s, -np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    same = labels[top] == labels[:, None]
    return float(same[:, 0].mean()), float(same.mean())


def distribution(score: np.ndarray, labels: np.ndarray) -> str:
    """A Markdown row: percentiles of the score over same- and different-product pairs."""
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same), k=1)
    a, b = score[same & upper], score[~same & upper]
    pa, pb = np.percentile(a, [5, 50, 95]), np.percentile(b, [50, 99])
    return " | ".join(f"{v:.3f}" for v in (*pa, *pb, b.max()))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--cache", type=Path, default=REPO / "data/models")
    ap.add_argument("--fit", choices=FITS, default="pad")
    ap.add_argument("--weights", default=None, help="JSON weights file (default: built-in)")
    ap.add_argument("--sweep", action="store_true", help="also other dfv weight shares")
    ap.add_argument("--engine", default=None, help="FV engine (default: the setting)")
    ap.add_argument("--engines", default=None, help="comma list of engines to compare")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"dataset not found: {args.data} (needs ../shared/datasets)", file=sys.stderr)
        return 2
    paths, labels, names = photos(args.data)
    t0 = time.perf_counter()
    hashes, fv, model_id, decoded = signatures(paths, args.model, args.cache, args.fit,
                                               args.engine)
    elapsed = time.perf_counter() - t0
    weights = load_weights(args.weights)
    print(f"{len(paths)} photos, {len(names)} products; model {model_id}; "
          f"weights {weights.source}; signatures in {elapsed:.1f}s\n")
    matrices = score_matrices(hashes, fv, weights)
    print("| score | recall@1 | precision@10 |")
    print("|---|---|---|")
    for name, score in matrices.items():
        r1, p10 = retrieval(score, labels)
        print(f"| {name} | {r1:.3f} | {p10:.3f} |")
    for share in (0.5, 0.6, 0.7, 0.8) if args.sweep else ():
        combined = score_matrices(hashes, fv, with_fv_share(weights, share))["combined"]
        r1, p10 = retrieval(combined, labels)
        print(f"| combined, dfv share {share:g} | {r1:.3f} | {p10:.3f} |")
    print("\n| score | same p5 | same p50 | same p95 | different p50 | different p99 "
          "| different max |")
    print("|---|---|---|---|---|---|---|")
    for name, score in matrices.items():
        print(f"| {name} | {distribution(score, labels)} |")
    if args.engines:
        engines_table(decoded, hashes, labels, weights, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
