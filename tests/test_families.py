"""Families (#18): neighbour search, calibrated votes, misfiled flag, the stage (full and
incremental) over real Parquet run files, families from a manifest."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from npimage.families.neighbours import fit_projection, top_k
from npimage.families.predict import Calibration, Votes, fit_calibration, predict
from npimage.families.stage import FamilyFiles, run_family_stage
from npimage.ingest.extract import extract_catalog
from npimage.schemas import CATALOG, FAMILIES, SIGNATURES


def test_top_k_is_exact_and_skips_own_group_and_unlabelled():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((3000, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    group = rng.integers(0, 700, 3000)
    ok = rng.random(3000) > 0.2
    q = np.arange(0, 3000, 7)
    sims, rows = top_k(base[q], group[q], base.astype(np.float16), group, ok, 5)
    ref = base[q] @ base.astype(np.float16).astype(np.float32).T
    ref[group[q][:, None] == group[None, :]] = -np.inf
    ref[:, ~ok] = -np.inf
    expect = -np.sort(-ref, axis=1)[:, :5]
    np.testing.assert_allclose(sims, expect, atol=1e-5)
    assert (group[rows] != group[q][:, None]).all() and ok[rows].all()
    assert (np.diff(sims, axis=1) <= 0).all()


def _clusters(n_fam: int, per_fam: int, dim: int = 64, noise: float = 0.6, seed: int = 0):
    """Non-negative vectors around one centre per family (like ReLU features), unit rows."""
    rng = np.random.default_rng(seed)
    centres = rng.random((n_fam, dim)) ** 3
    fam = np.repeat(np.arange(n_fam), per_fam)
    x = centres[fam] + noise * rng.random((len(fam), dim)) ** 3
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16), fam


def _votes(fv, fam, labels, k=10):
    space = fit_projection(fv, dims=16).apply(fv)
    g = np.arange(len(fv))
    sims, rows = top_k(space, g, space, g, labels >= 0, k)
    return Votes(g, sims, np.where(rows >= 0, labels[np.maximum(rows, 0)], -1))


def test_votes_predict_hidden_families_and_flag_misfiled():
    fv, fam = _clusters(6, 40)
    labels = fam.copy()
    wrong = np.array([3, 50, 130, 200])
    labels[wrong] = (fam[wrong] + 1) % 6
    votes = _votes(fv, fam, labels)
    cal = fit_calibration(votes, labels, 6)
    assert cal.n_fit == len(fv) and 0 < cal.tau <= 1
    pred = predict(votes, labels, 6, cal, misfiled_at=0.8)
    assert (pred.top[:, 0] == fam).mean() > 0.95
    assert np.allclose(np.nansum(pred.prob, axis=1) <= 1.0 + 1e-9, True)
    assert set(np.flatnonzero(pred.misfiled)) == set(wrong)
    # a product with nothing near it that has a family gets no prediction
    empty = predict(Votes(np.array([0]), np.full((1, 3), -np.inf, np.float32),
                          np.full((1, 3), -1)), np.array([-1]), 6, cal)
    assert empty.top[0, 0] == -1 and not empty.misfiled[0]


def test_calibration_prefers_sharper_votes_on_clean_clusters():
    fv, fam = _clusters(4, 30, noise=0.2)
    votes = _votes(fv, fam, fam)
    cal = fit_calibration(votes, fam, 4)
    loose = Calibration(tau=1.0, alpha=0.3)
    p_fit = predict(votes, fam, 4, cal).current_prob.mean()
    p_loose = predict(votes, fam, 4, loose).current_prob.mean()
    assert p_fit > p_loose


# -- the stage over run files ----------------------------------------------------------------

def _sha(image_id: str, version: int) -> str:
    return hashlib.sha256(f"{image_id}:{version}".encode()).hexdigest()


def _write_run(run_dir: Path, fv: np.ndarray, products: list[str], families: dict[str, str],
               versions: dict[str, int] | None = None, fresh: list[str] | None = None) -> None:
    """A run folder as the stages before the family stage leave it (real Parquet)."""
    versions = versions or {}
    ids = [f"img{i:04d}" for i in range(len(fv))]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    cat = pa.table({"client_id": ["c"] * len(ids), "image_id": ids, "product_id": products,
                    "reference": [None] * len(ids), "uri": [f"/x/{i}" for i in ids],
                    "size_bytes": [1] * len(ids), "modified_at": [now] * len(ids)}, CATALOG)
    pq.write_table(cat, run_dir / "catalog.parquet")
    prods = sorted(set(products))
    pq.write_table(pa.table({"client_id": ["c"] * len(prods), "product_id": prods,
                             "family": [families.get(p) for p in prods]}, FAMILIES),
                   run_dir / "families.parquet")
    sig = pa.table({
        "client_id": ["c"] * len(ids), "image_id": ids,
        "sha256": [_sha(i, versions.get(i, 0)) for i in ids], "size_bytes": [1] * len(ids),
        "width": [8] * len(ids), "height": [8] * len(ids), "ahash": [0] * len(ids),
        "dhash": [0] * len(ids), "phash": [0] * len(ids),
        "fv": pa.array(list(fv.astype(np.float16)), pa.list_(pa.float16())),
        "fv_model": ["m@1"] * len(ids), "computed_at": [now] * len(ids),
        "detail": [None] * len(ids), "sig_version": [None] * len(ids),
        "thumb": [None] * len(ids)}, SIGNATURES)
    (run_dir / "signatures").mkdir(parents=True)
    pq.write_table(sig, run_dir / "signatures" / "shard-00000.parquet")
    (run_dir / "sig_batches").mkdir()
    chosen = sig if fresh is None else sig.filter(pa.compute.is_in(sig["image_id"],
                                                                  pa.array(fresh)))
    pq.write_table(chosen, run_dir / "sig_batches" / "batch-00000.parquet")


def _predictions(run_dir: Path) -> dict[str, dict]:
    t = pq.read_table(FamilyFiles(run_dir).predictions).to_pylist()
    return {r["product_id"]: r for r in t}


def test_stage_full_then_incremental_then_family_change(tmp_path):
    fv, fam = _clusters(5, 24, dim=96, seed=3)
    # products of two images each: p000..p059; family names by cluster
    products = [f"p{i // 2:03d}" for i in range(len(fv))]
    truth = {f"p{i // 2:03d}": f"fam{fam[i]}" for i in range(len(fv))}
    families = dict(truth)
    families["p001"] = "fam4"  # misfiled (truly fam0)
    del families["p002"]  # no family: gets a suggestion
    full = tmp_path / "run1"
    full.mkdir()
    _write_run(full, fv, products, families)
    got = run_family_stage(full, "c", "run1")
    assert got["mode"] == "all" and got["predicted"] == 60
    pred = _predictions(full)
    assert pred["p002"]["family"] is None and pred["p002"]["predicted_family"] == "fam0"
    assert pred["p001"]["misfiled"] and pred["p001"]["predicted_family"] == "fam0"
    assert sum(r["misfiled"] for r in pred.values()) == 1
    right = sum(r["predicted_family"] == truth[p] for p, r in pred.items())
    assert right >= 58
    ev = json.loads(pred["p002"]["evidence"])
    assert ev and all(e["match_product_id"] != "p002" for e in ev)
    assert ev[0]["similarity"] >= ev[-1]["similarity"] and "family" in ev[0]
    assert pred["p002"]["confidence"] >= (pred["p002"]["confidence_2"] or 0)

    # incremental: image 10 (product p005) re-shot, a new product p060 with two images
    fv2 = np.concatenate([fv, fv[[0, 1]]])
    fv2[10] = fv[12]
    products2 = [*products, "p060", "p060"]
    inc = tmp_path / "run2"
    inc.mkdir()
    _write_run(inc, fv2, products2, {**families, "p060": "fam0"}, versions={"img0010": 1},
               fresh=["img0010", "img0120", "img0121"])
    got = run_family_stage(inc, "c", "run2", baseline=full)
    assert got["mode"] == "changed" and got["predicted"] == 2  # p005 and p060
    pred2 = _predictions(inc)
    assert len(pred2) == 61
    assert pred2["p060"]["predicted_run_id"] == "run2"
    assert pred2["p005"]["predicted_run_id"] == "run2"
    assert pred2["p003"]["predicted_run_id"] == "run1" and pred2["p003"]["run_id"] == "run2"
    assert pred2["p003"]["confidence"] == pred["p003"]["confidence"]

    # the families changed (p001 refiled correctly): every product again
    again = tmp_path / "run3"
    again.mkdir()
    _write_run(again, fv2, products2, {**families, "p060": "fam0", "p001": "fam0"})
    got = run_family_stage(again, "c", "run3", baseline=inc)
    assert got["mode"] == "all" and got["predicted"] == 61
    assert not _predictions(again)["p001"]["misfiled"]


def test_stage_without_families_writes_no_prediction(tmp_path):
    fv, _ = _clusters(2, 4)
    _write_run(tmp_path, fv, [f"p{i}" for i in range(8)], {})
    assert run_family_stage(tmp_path, "c", "r")["mode"] == "skipped"
    assert pq.read_table(FamilyFiles(tmp_path).predictions).num_rows == 0


def test_manifest_family_column(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,product_id,uri,family\n"
                        "a,P1,a.png,Milk\nb,P1,b.png,Juice\nc,P2,c.png,\n")
    out = tmp_path / "out"
    res = extract_catalog("c", manifest, out / "catalog.parquet", out / "rejects.parquet",
                          out / "families.parquet")
    assert res.n_images == 3
    fams = pq.read_table(out / "families.parquet").to_pylist()
    assert [(r["product_id"], r["family"]) for r in fams] == [("P1", "Milk"), ("P2", None)]
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert len(rejects) == 1 and rejects[0]["stage"] == "family"
    assert "'Juice'" in rejects[0]["reason"] and "line 3" in rejects[0]["reason"]
    # no family column: no families file (families unknown)
    manifest.write_text("image_id,product_id,uri\na,P1,a.png\n")
    extract_catalog("c", manifest, out / "catalog.parquet", out / "rejects.parquet",
                    out / "families.parquet")
    assert not (out / "families.parquet").exists()


@pytest.mark.parametrize("dims", [8])
def test_projection_round_trip(dims):
    fv, _ = _clusters(3, 10)
    p = fit_projection(fv, dims=dims)
    from npimage.families.neighbours import Projection

    q = Projection.from_arrays(p.to_arrays())
    np.testing.assert_array_equal(p.apply(fv), q.apply(fv))
    assert np.allclose(np.linalg.norm(p.apply(fv).astype(np.float32), axis=1), 1, atol=1e-2)


def test_grocery_subset_leave_one_product_out(tmp_path):
    """Real photos: 3 train + 2 val photos of each fine class, the shipped extractor."""
    from conftest import dataset

    from npimage.families.evaluate import evaluate_families
    from npimage.families.grocery import embed_cached, load_photos

    root = dataset("grocery-store")
    photos = load_photos(root)
    keep = sorted(i for split, n in (("train", 3), ("val", 2)) for f in np.unique(photos.fine)
                  for i in np.flatnonzero((photos.fine == f) & (photos.split == split))[:n])
    sub = photos.take(np.array(keep))
    fv, model_id = embed_cached(sub, "efficientnet-lite0", tmp_path / "models",
                                tmp_path / "fv.npz")
    assert fv.shape == (len(sub), 1280) and model_id.startswith("efficientnet-lite0@")
    easy = evaluate_families(fv, sub.family, sub.fine, sub.split, seeds=(0,))
    hard = evaluate_families(fv, sub.family, sub.fine, sub.split, by_fine=True, seeds=(0,))
    assert easy.n_eval == int((sub.split == "val").sum()) > 50
    assert easy.top1 >= 0.7 and easy.top3 >= 0.85
    assert hard.top1 < easy.top1  # a brand never seen is harder than another photo of one
    assert 0 <= easy.ece <= 0.2


def test_stage_with_no_signature_and_with_one_image(tmp_path):
    """Every image rejected (no signature) and a one-image catalogue: no prediction, no error."""
    fv, _ = _clusters(1, 1)
    one = tmp_path / "one"
    one.mkdir()
    _write_run(one, fv, ["p0"], {"p0": "fam"})
    assert run_family_stage(one, "c", "r")["predicted"] == 1
    row = _predictions(one)["p0"]
    assert row["predicted_family"] is None and not row["misfiled"] and row["n_votes"] == 0
    # the only product with a family has no image: nobody can vote, nothing fails
    two = tmp_path / "two"
    two.mkdir()
    _write_run(two, np.concatenate([fv, fv]), ["p0", "p1"], {})
    pq.write_table(pa.table({"client_id": ["c"] * 3, "product_id": ["p0", "p1", "p9"],
                             "family": [None, None, "fam"]}, FAMILIES), two / "families.parquet")
    assert run_family_stage(two, "c", "r")["predicted"] == 2
    assert all(r["predicted_family"] is None for r in _predictions(two).values())
    empty = tmp_path / "empty"
    empty.mkdir()
    _write_run(empty, fv, ["p0"], {"p0": "fam"})
    shard = empty / "signatures" / "shard-00000.parquet"
    pq.write_table(pq.read_table(shard).slice(0, 0), shard)
    assert run_family_stage(empty, "c", "r")["mode"] == "skipped"
