"""Cost of the family stage in a nightly run, at catalogue scale, on synthetic run files.

Builds a baseline run folder as a published full run leaves it: M catalogue images in
products of 5 images, F families, the family space (a 1280 -> 128 projection), every
image's 128-d vector (family/vectors.parquet), the products' predictions. Then a nightly
run folder: the same catalogue plus N new images (new products of 5 images, with a
family), whose 1280-d feature vectors are in sig_batches/ as the signature stage writes
them. It runs the real `run_family_stage` on the nightly (incremental: only new and
changed products are predicted, the rest carried over) and prints a table: the stage's
wall time, the part of it spent in the neighbour search (N x M pairs), pairs/s, peak RSS; and the
extrapolated time of re-predicting every product (M x M pairs, what a change of the
families or of the model costs). Wall and CPU seconds are both given: on a machine shared
with other work the CPU seconds (summed over threads) say what the stage itself costs.
Vectors are clustered by family so that the votes and evidence are realistic in size.
The last line is one JSON object.

    .venv/bin/python bench/families.py --m 1000000 --n 10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import npimage.families.stage as stage_module
from npimage.families.neighbours import Projection, top_k
from npimage.families.predict import DEFAULT_CALIBRATION
from npimage.families.stage import VECTORS, FamilyFiles, run_family_stage
from npimage.schemas import CATALOG, FAMILIES, FAMILY_PREDICTIONS, SIGNATURES

PER_PRODUCT = 5
DIM, DIMS = 1280, 128


def _ids(prefix: str, n: int, start: int = 0) -> pa.Array:
    return pa.array([f"{prefix}{i:08d}" for i in range(start, start + n)], pa.string())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _catalog(image_ids: pa.Array, product_ids: pa.Array) -> pa.Table:
    n = len(image_ids)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return pa.table({"client_id": pa.array(["bench"] * n), "image_id": image_ids,
                     "product_id": product_ids, "reference": pa.nulls(n, pa.string()),
                     "uri": image_ids, "size_bytes": pa.array(np.ones(n, np.int64)),
                     "modified_at": pa.array([now] * n, pa.timestamp("us", tz="UTC"))},
                    schema=CATALOG)


def _signatures(image_ids: pa.Array, fv: np.ndarray | None) -> pa.Table:
    """Signature rows; `fv` None leaves the vectors null (the stage never reads the
    1280-d vectors of images whose 128-d vector it already has)."""
    n = len(image_ids)
    zeros = pa.array(np.zeros(n, np.int64))
    vec = (pa.nulls(n, pa.list_(pa.float16())) if fv is None else pa.ListArray.from_arrays(
        pa.array(np.arange(0, fv.size + 1, fv.shape[1], dtype=np.int32)),
        pa.array(fv.reshape(-1), pa.float16())))
    sha = pa.array([f"{i:064x}" for i in range(n)]) if fv is None else pa.array(
        [f"{i + 10**12:064x}" for i in range(n)])
    return pa.table({"client_id": pa.array(["bench"] * n), "image_id": image_ids,
                     "sha256": sha, "size_bytes": zeros, "width": pa.array(np.ones(n, np.int32)),
                     "height": pa.array(np.ones(n, np.int32)), "ahash": zeros, "dhash": zeros,
                     "phash": zeros, "fv": vec, "fv_model": pa.array(["bench@1"] * n),
                     "computed_at": pa.nulls(n, pa.timestamp("us", tz="UTC")),
                     "detail": pa.nulls(n, pa.binary()),
                     "sig_version": pa.nulls(n, pa.int16()), "thumb": pa.nulls(n, pa.binary())},
                    schema=SIGNATURES)


def build(root: Path, m: int, n: int, n_fam: int, seed: int = 0) -> tuple[Path, Path]:
    """Baseline and nightly run folders (see the module docstring)."""
    rng = np.random.default_rng(seed)
    base, night = root / "base", root / "night"
    for d in (base, night):
        (d / "signatures").mkdir(parents=True)
        (d / "sig_batches").mkdir()
        (d / "family").mkdir()
    axes, _ = np.linalg.qr(rng.standard_normal((DIM, DIMS)))
    projection = Projection(np.zeros(DIM, np.float32), axes.astype(np.float32))
    centres = _unit(rng.standard_normal((n_fam, DIMS)).astype(np.float32))
    n_prod = m // PER_PRODUCT
    prod_fam = rng.integers(0, n_fam, n_prod)
    img_prod = np.repeat(np.arange(n_prod), PER_PRODUCT)
    vec = _unit(centres[prod_fam[img_prod]] + rng.standard_normal((m, DIMS)).astype(
        np.float32) * 0.08).astype(np.float16)
    image_ids = _ids("i", m)
    product_ids = _ids("p", n_prod)
    img_prod_ids = product_ids.take(pa.array(img_prod))
    fam_names = pa.array([f"family-{f:04d}" for f in prod_fam])
    families = pa.table({"client_id": pa.array(["bench"] * n_prod), "product_id": product_ids,
                         "family": fam_names}, schema=FAMILIES)
    pq.write_table(_catalog(image_ids, img_prod_ids), base / "catalog.parquet")
    pq.write_table(families, base / "families.parquet")
    sigs = _signatures(image_ids, None)
    pq.write_table(sigs, base / "signatures" / "shard-00000.parquet")
    vectors = pa.table({"image_id": image_ids, "sha256": sigs["sha256"],
                        "vec": pa.ListArray.from_arrays(
                            pa.array(np.arange(0, vec.size + 1, DIMS, dtype=np.int32)),
                            pa.array(vec.reshape(-1), pa.float16()))}, schema=VECTORS)
    files = FamilyFiles(base)
    pq.write_table(vectors, files.vectors)
    np.savez(files.projection, **projection.to_arrays())
    preds = {name: pa.nulls(n_prod, f.type) for name, f in zip(
        FAMILY_PREDICTIONS.names, FAMILY_PREDICTIONS, strict=True)}
    preds.update(client_id=pa.array(["bench"] * n_prod), product_id=product_ids,
                 family=fam_names, predicted_family=fam_names,
                 confidence=pa.array(np.full(n_prod, 0.9, np.float32)),
                 misfiled=pa.array(np.zeros(n_prod, bool)),
                 evidence=pa.array(['[{"image_id": "x", "similarity": 0.9}]'] * n_prod),
                 predicted_run_id=pa.array(["base"] * n_prod), run_id=pa.array(["base"] * n_prod))
    pq.write_table(pa.table(preds, schema=FAMILY_PREDICTIONS), files.predictions)
    files.state.write_text(json.dumps({"model_id": "bench@1", "calibration":
                                       DEFAULT_CALIBRATION.to_dict()}))

    # the nightly: N new images of N / 5 new products, 1280-d vectors near their family
    n_new_prod = n // PER_PRODUCT
    new_fam = rng.integers(0, n_fam, n_new_prod)
    new_prod = np.repeat(np.arange(n_new_prod), PER_PRODUCT)
    lifted = centres[new_fam[new_prod]] @ axes.T.astype(np.float32)  # back to 1280-d
    new_fv = _unit(lifted + rng.standard_normal((n, DIM)).astype(np.float32) * 0.08 / np.sqrt(
        DIM / DIMS)).astype(np.float16)
    new_ids = _ids("n", n)
    new_prod_ids = _ids("q", n_new_prod)
    all_ids = pa.concat_arrays([image_ids, new_ids])
    all_prod = pa.concat_arrays([img_prod_ids, new_prod_ids.take(pa.array(new_prod))])
    pq.write_table(_catalog(all_ids, all_prod), night / "catalog.parquet")
    new_families = pa.table({"client_id": pa.array(["bench"] * n_new_prod),
                             "product_id": new_prod_ids,
                             "family": pa.array([f"family-{f:04d}" for f in new_fam])},
                            schema=FAMILIES)
    pq.write_table(pa.concat_tables([families, new_families]), night / "families.parquet")
    fresh = _signatures(new_ids, new_fv)
    pq.write_table(pa.concat_tables([sigs, fresh]), night / "signatures" / "shard-00000.parquet")
    pq.write_table(fresh, night / "sig_batches" / "batch-00000.parquet")
    return base, night


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=1_000_000, help="catalogue images")
    parser.add_argument("--n", type=int, default=10_000, help="new images of the nightly")
    parser.add_argument("--families", type=int, default=500)
    parser.add_argument("--work", type=Path, default=None, help="folder for the run files")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        t0 = time.perf_counter()
        base, night = build(Path(tmp), args.m, args.n, args.families)
        t_build = time.perf_counter() - t0
        timed: dict[str, float] = {}

        def search(*a, **kw):  # the stage's own search call, timed (wall and CPU)
            t, c = time.perf_counter(), time.process_time()
            out = top_k(*a, **kw)
            timed.update(wall=time.perf_counter() - t, cpu=time.process_time() - c)
            return out

        stage_module.top_k = search
        t0, c0 = time.perf_counter(), time.process_time()
        got = run_family_stage(night, "bench", "night", baseline=base)
        t_stage, c_stage = time.perf_counter() - t0, time.process_time() - c0
        stage_module.top_k = top_k
        t_search, c_search = timed["wall"], timed["cpu"]
        preds = pq.read_table(FamilyFiles(night).predictions,
                              columns=["product_id", "predicted_run_id", "predicted_family"])
    pairs = args.n * (args.m + args.n)
    rate = pairs / t_search
    cpu_rate = pairs / c_search
    full = (args.m + args.n) ** 2 / rate
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ("catalogue images (M)", f"{args.m:,}"),
        ("new images (N)", f"{args.n:,}"),
        ("products predicted / carried", f"{got['predicted']:,} / "
                                         f"{preds.num_rows - got['predicted']:,}"),
        ("family stage, nightly: wall / CPU (s)", f"{t_stage:.1f} / {c_stage:.1f}"),
        ("  of which neighbour search N x M: wall / CPU (s)",
         f"{t_search:.1f} / {c_search:.1f}"),
        ("search rate (pairs/s)", f"{rate:.3g}"),
        ("re-predict everything, M x M (extrapolated, min)", f"{full / 60:.0f}"),
        ("  same from CPU time (idle 2 cores: CPU/2 to CPU, min)",
         f"{(args.m + args.n) ** 2 / cpu_rate / 2 / 60:.0f} to "
         f"{(args.m + args.n) ** 2 / cpu_rate / 60:.0f}"),
        ("peak RSS (MB)", f"{rss:.0f}"),
        ("set-up of the synthetic runs (s, not counted)", f"{t_build:.1f}"),
        ("load average at start (2 cores = 2.0 busy)", f"{load:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"family stage, {platform.processor() or platform.machine()}, {os.cpu_count()} cpu")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(json.dumps({"m": args.m, "n": args.n, "stage_s": round(t_stage, 2),
                      "stage_cpu_s": round(c_stage, 2), "search_cpu_s": round(c_search, 2),
                      "search_s": round(t_search, 2), "pairs_per_s": rate,
                      "full_min": round(full / 60, 1), "rss_mb": round(rss), "load": load,
                      "predicted": got["predicted"], "rows": preds.num_rows}))


if __name__ == "__main__":
    main()
