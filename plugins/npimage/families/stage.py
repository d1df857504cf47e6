"""The family stage of a run: predictions per product from the run folder's files.

Reads (run folder): catalog.parquet (image -> product), families.parquet (product ->
family; absent = families unknown, the stage does nothing), signatures/shard-*.parquet
and sig_batches/*.parquet (feature vectors). Writes:

- family/projection.npz: the family space (npimage.families.neighbours);
- family/vectors.parquet: every image's unit vector in that space (image_id, sha256, vec);
- family/state.json: model id, digest of the families, calibration, what was predicted;
- family_predictions.parquet (schemas.FAMILY_PREDICTIONS).

Full runs (or no usable baseline) fit the projection and the calibration on the whole
catalogue and predict every product. Incremental runs reuse the baseline's projection,
vectors and calibration, project only new and changed images, and predict only the
products whose images changed (added, removed, re-shot, or moved between products); the
baseline's other predictions are carried over. When the families themselves changed
(a product present before has another family now, or none), or the model did, every
product is predicted again; new products arriving with a family are not such a change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from npimage.families.files import FamilyFiles
from npimage.families.neighbours import FIT_SAMPLE, Projection, fit_projection, top_k
from npimage.families.predict import (
    MISFILED_AT,
    Calibration,
    K,
    Votes,
    evidence_json,
    fit_calibration,
    predict,
)
from npimage.schemas import FAMILIES, FAMILY_PREDICTIONS, SIGNATURES
from npimage.storage.parquet_io import read_parts, read_table, write_table
from npimage.storage.runs import atomic_write_text

log = logging.getLogger("npimage")

VECTORS = pa.schema([("image_id", pa.string()), ("sha256", pa.string()),
                     ("vec", pa.list_(pa.float16()))])
#: Rows of feature vectors read and projected at a time.
READ_BATCH = 65_536


def families_known(run_dir: Path) -> bool:
    """True when the run's catalogue snapshot gives at least one product a family."""
    path = FamilyFiles(run_dir).families
    if not path.exists():
        return False
    fam = pq.read_table(path, columns=["family"])["family"]
    return bool(len(fam) and pc.sum(pc.invert(pc.is_null(fam))).as_py())


def families_digest(families: pa.Table) -> str:
    """Digest of the (product, family) pairs, order-independent."""
    t = families.select(["product_id", "family"]).sort_by("product_id")
    h = hashlib.sha256()
    for col in ("product_id", "family"):
        h.update("\x1f".join("" if v is None else v for v in t[col].to_pylist()).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def _fv_rows(table: pa.Table) -> np.ndarray:
    arr = table["fv"].combine_chunks()
    if arr.null_count:
        raise ValueError(f"{arr.null_count} signature(s) lack a feature vector")
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(arr), -1) if len(arr) else np.zeros((0, 1), np.float16)


def _iter_fv(files: list[Path], ids: pa.Array | None = None):
    """(image_id, sha256, fv) batches of signature files, optionally only `ids`."""
    for f in files:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(READ_BATCH, columns=["image_id", "sha256", "fv"]):
            t = pa.Table.from_batches([batch])
            if ids is not None:
                t = t.filter(pc.is_in(t["image_id"], ids))
            if t.num_rows:
                yield t


def _fit(files: list[Path], n_rows: int, seed: int = 0) -> Projection:
    """The family space fitted on a seeded sample of every signature file's vectors."""
    rng = np.random.default_rng(seed)
    keep_share = min(1.0, FIT_SAMPLE / max(n_rows, 1))
    sample = [(_fv_rows(t)[rng.random(t.num_rows) < keep_share]) for t in _iter_fv(files)]
    return fit_projection(np.concatenate(sample))


def _project(files: list[Path], projection: Projection, ids: pa.Array | None) -> pa.Table:
    """VECTORS rows of the images of `files` (only `ids` when given)."""
    parts = []
    for t in _iter_fv(files, ids):
        vec = projection.apply(_fv_rows(t))
        flat = pa.array(vec.reshape(-1), pa.float16())
        offsets = pa.array(np.arange(0, vec.size + 1, projection.dims, dtype=np.int32))
        parts.append(pa.table({"image_id": t["image_id"], "sha256": t["sha256"],
                               "vec": pa.ListArray.from_arrays(offsets, flat)}))
    return pa.concat_tables(parts).cast(VECTORS) if parts else VECTORS.empty_table()


def _load_state(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None:
        return None
    files = FamilyFiles(run_dir)
    if not (files.state.exists() and files.projection.exists() and files.vectors.exists()
            and files.predictions.exists()):
        return None
    return json.loads(files.state.read_text())


def _families_changed(old_path: Path, families: pa.Table) -> bool:
    """True when a product of both catalogues has another family now (one set, cleared or
    moved). New products with a family are not a change: they vote like new images."""
    if not old_path.exists():
        return True
    old = read_table(old_path, FAMILIES).select(["product_id", "family"])
    new = families.select(["product_id", "family"]).rename_columns(["product_id", "new"])
    both = old.join(new, "product_id", join_type="inner")
    differ = pc.fill_null(pc.not_equal(both["family"], both["new"]),
                          pc.xor(pc.is_null(both["family"]), pc.is_null(both["new"])))
    return bool(pc.any(differ).as_py())


def _changed_products(catalog: pa.Table, baseline: Path, todo: pa.Array) -> set[str]:
    """Products with a new or changed image, or an image added, removed or moved."""
    old = pq.read_table(baseline / "catalog.parquet", columns=["image_id", "product_id"])
    cur = catalog.select(["image_id", "product_id"])
    joined = cur.join(old.rename_columns(["image_id", "old_product_id"]), "image_id",
                      join_type="full outer")
    moved = joined.filter(pc.fill_null(pc.not_equal(joined["product_id"],
                                                    joined["old_product_id"]), True))
    out = {p for p in moved["product_id"].to_pylist() if p is not None}
    out |= {p for p in moved["old_product_id"].to_pylist() if p is not None}
    fresh = cur.filter(pc.is_in(cur["image_id"], todo))
    return out | set(fresh["product_id"].to_pylist())


def run_family_stage(run_dir: Path, client_id: str, run_id: str, baseline: Path | None = None,
                     k: int = K, misfiled_at: float = MISFILED_AT) -> dict[str, Any]:
    """Predict families (see module docstring); return counts for logs and XCom."""
    files = FamilyFiles(run_dir)
    if not families_known(run_dir):
        write_table(FAMILY_PREDICTIONS.empty_table(), files.predictions)
        return {"families": 0, "predicted": 0, "misfiled": 0, "mode": "skipped"}
    families = read_table(files.families, FAMILIES)
    digest = families_digest(families)
    shards = sorted((run_dir / "signatures").glob("shard-*.parquet"))
    sigs = read_parts(run_dir / "signatures", SIGNATURES, "shard-*.parquet",
                      columns=["image_id", "sha256", "fv_model"])
    if not sigs.num_rows:  # every image rejected, or an empty catalogue: nothing to vote
        write_table(FAMILY_PREDICTIONS.empty_table(), files.predictions)
        return {"families": 0, "predicted": 0, "misfiled": 0, "mode": "skipped"}
    models = pc.unique(sigs["fv_model"].drop_null()).to_pylist()
    if len(models) != 1 or sigs["fv_model"].null_count:
        raise ValueError(f"family stage needs one feature-vector model for every image, "
                         f"got {models} ({sigs['fv_model'].null_count} without)")
    model_id = models[0]

    old = _load_state(baseline)
    base = (FamilyFiles(baseline) if baseline is not None and old is not None
            and old.get("model_id") == model_id else None)
    old_cal = Calibration.from_dict(old["calibration"]) if base and old else None
    if base is not None:
        projection = Projection.from_arrays(dict(np.load(base.projection)))
        kept = pq.read_table(base.vectors)
        kept = kept.filter(pc.is_in(_id_sha(kept), _id_sha(sigs)))  # same image, same bytes
    else:
        projection = _fit(shards, sigs.num_rows)
        kept = VECTORS.empty_table()
    todo = pc.filter(sigs["image_id"], pc.invert(pc.is_in(sigs["image_id"], kept["image_id"])))
    fresh_files = sorted((run_dir / "sig_batches").glob("*.parquet"))
    fresh = _project(fresh_files, projection, todo) if base else VECTORS.empty_table()
    rest = pc.filter(todo, pc.invert(pc.is_in(todo, fresh["image_id"])))
    if len(rest):
        fresh = pa.concat_tables([fresh, _project(shards, projection, rest)])
    fresh = fresh.filter(pc.is_in(fresh["image_id"], todo))  # sig_batches may hold rejects' ids
    fresh = _unique_ids(fresh)
    vectors = pa.concat_tables([kept, fresh]).sort_by("image_id")
    _save_projection(projection, files.projection)
    write_table(vectors, files.vectors, VECTORS)

    catalog = pq.read_table(run_dir / "catalog.parquet", columns=["image_id", "product_id"])
    everything = base is None or _families_changed(base.families, families)
    changed = None if base is None or everything else _changed_products(catalog, base.run_dir,
                                                                        todo)
    table, cal, n_pred = _predict_products(vectors, catalog, families, changed,
                                           None if everything else old_cal,
                                           client_id, run_id, k, misfiled_at)
    if base is not None and changed is not None:
        carried = read_table(base.predictions, FAMILY_PREDICTIONS)
        carried = carried.filter(pc.invert(pc.is_in(carried["product_id"],
                                                    pa.array(sorted(changed), pa.string()))))
        carried = carried.filter(pc.is_in(carried["product_id"], catalog["product_id"]))
        carried = carried.set_column(carried.schema.get_field_index("run_id"), "run_id",
                                     pa.array([run_id] * carried.num_rows, pa.string()))
        table = pa.concat_tables([carried, table]).sort_by("product_id")
    write_table(table, files.predictions, FAMILY_PREDICTIONS)
    state = {"model_id": model_id, "families_digest": digest, "dims": projection.dims,
             "calibration": cal.to_dict(), "misfiled_at": misfiled_at, "k": k,
             "mode": "all" if everything else "changed", "predicted": n_pred,
             "families": len(pc.unique(families["family"].drop_null()))}
    atomic_write_text(files.state, json.dumps(state, indent=2))
    n_misfiled = pc.sum(table["misfiled"]).as_py() or 0
    log.info("families: %d product(s) predicted (%s), %d possibly misfiled, tau %.3g",
             n_pred, state["mode"], n_misfiled, cal.tau)
    return {"families": state["families"], "predicted": n_pred, "misfiled": n_misfiled,
            "mode": state["mode"], "rows": table.num_rows}


def _id_sha(t: pa.Table) -> pa.ChunkedArray:
    """image_id and sha256 as one key per row."""
    return pc.binary_join_element_wise(t["image_id"], pc.fill_null(t["sha256"], ""), "\x1f")


def _save_projection(projection: Projection, path: Path) -> None:
    """Write the projection under a temporary name, then rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    arrays = projection.to_arrays()
    np.savez(tmp, mean=arrays["mean"], axes=arrays["axes"])
    tmp.replace(path)


def _unique_ids(t: pa.Table) -> pa.Table:
    """First row of each image_id (a re-planned batch may hold an id twice)."""
    if not t.num_rows:
        return t
    ids = t["image_id"].to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    return t.take(pa.array(np.sort(first)))


def _vec_matrix(vectors: pa.Table) -> np.ndarray:
    arr = vectors["vec"].combine_chunks()
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(arr), -1) if len(arr) else np.zeros((0, 1), np.float16)


def _predict_products(vectors: pa.Table, catalog: pa.Table, families: pa.Table,
                      changed: set[str] | None, cal: Calibration | None, client_id: str,
                      run_id: str, k: int, misfiled_at: float
                      ) -> tuple[pa.Table, Calibration, int]:
    """Predictions of the products `changed` (None: all of them) as a FAMILY_PREDICTIONS
    table; fits the calibration on every product when `cal` is None."""
    img = vectors.select(["image_id"]).join(catalog, "image_id").sort_by("image_id")
    img = img.filter(pc.is_valid(img["product_id"]))  # an image of no product: not a product
    vec = _vec_matrix(vectors.filter(pc.is_in(vectors["image_id"], img["image_id"])))
    product_ids = img["product_id"].to_numpy(zero_copy_only=False).astype(object)
    products, group = np.unique(product_ids.astype(str), return_inverse=True)
    fam_of = dict(zip(families["product_id"].to_pylist(), families["family"].to_pylist(),
                      strict=True))
    fam_name = np.array([fam_of.get(p) or "" for p in products], dtype=object)
    names = np.array(sorted({f for f in fam_name if f}), dtype=object)
    code = {f: i for i, f in enumerate(names)}
    fam = np.array([code.get(f, -1) for f in fam_name], np.int64)
    group = group.astype(np.int64)
    img_fam = fam[group]
    wanted = np.ones(len(products), bool) if changed is None else np.isin(
        products, np.array(sorted(changed), dtype=str))
    q = np.flatnonzero(wanted[group])
    t0 = time.perf_counter()
    sims, rows = top_k(vec[q], group[q], vec, group, img_fam >= 0, k, threads=1)
    log.info("families: neighbours of %d image(s) among %d in %.1f s", len(q), len(vec),
             time.perf_counter() - t0)
    fams = np.where(rows >= 0, img_fam[np.maximum(rows, 0)], -1)
    votes = Votes(group[q], sims, fams)
    if cal is None:
        cal = fit_calibration(votes, fam, len(names))
    pred = predict(votes, fam, len(names), cal, misfiled_at)
    image_ids = img["image_id"].to_numpy(zero_copy_only=False).astype(object)
    img_fam_name = np.full(len(img_fam), None, dtype=object)
    img_fam_name[img_fam >= 0] = names[img_fam[img_fam >= 0]]
    evidence = evidence_json(image_ids[q], group[q], sims, rows, image_ids,
                             products[group].astype(object), img_fam_name, len(products),
                             cal.tau)
    pidx = np.flatnonzero(wanted)
    n_images = np.bincount(group, minlength=len(products))

    def fam_col(col: int) -> pa.Array:
        t = pred.top[pidx, col]
        return pa.array([str(names[f]) if f >= 0 else None for f in t.tolist()], pa.string())

    def prob_col(values: np.ndarray) -> pa.Array:
        return pa.array(values, pa.float32(), mask=np.isnan(values))

    n = len(pidx)
    table = pa.table({
        "client_id": pa.array([client_id] * n, pa.string()),
        "product_id": pa.array(products[pidx].tolist(), pa.string()),
        "family": pa.array([fam_name[i] or None for i in pidx], pa.string()),
        "predicted_family": fam_col(0), "confidence": prob_col(pred.prob[pidx, 0]),
        "family_2": fam_col(1), "confidence_2": prob_col(pred.prob[pidx, 1]),
        "family_3": fam_col(2), "confidence_3": prob_col(pred.prob[pidx, 2]),
        "current_confidence": prob_col(pred.current_prob[pidx]),
        "misfiled": pa.array(pred.misfiled[pidx], pa.bool_()),
        "n_images": pa.array(n_images[pidx], pa.int32()),
        "n_votes": pa.array(pred.n_votes[pidx], pa.int32()),
        "evidence": pa.array([evidence[i] for i in pidx], pa.string()),
        "predicted_run_id": pa.array([run_id] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
    })
    return table, cal, n
