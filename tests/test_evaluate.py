"""evaluate: truth formats, pair metrics per band, retrieval metrics, on a real published run."""

from __future__ import annotations

import csv

import duckdb
import pytest

from npimage.errors import UnknownClientError
from npimage.quality.evaluate import (
    Truth,
    _prf_by_band,
    _retrieval,
    by_kind,
    evaluate,
    format_by_kind,
    load_truth,
)


def test_truth_formats(tmp_path):
    groups = tmp_path / "g.csv"
    groups.write_text("image_id,group_id\na,1\nb,1\nc,1\nd,2\n")
    t = load_truth(groups)
    assert t.positives == {("a", "b"), ("a", "c"), ("b", "c")}
    assert t.is_judged(("a", "d")) and not t.is_judged(("a", "zz"))
    pairs = tmp_path / "p.csv"
    pairs.write_text("image_id,match_image_id,label\nb,a,1\nc,a,0\nd,e,same\n")
    t = load_truth(pairs)
    assert t.positives == {("a", "b"), ("d", "e")} and t.negatives == {("a", "c")}
    assert not t.is_judged(("a", "d"))
    bad = tmp_path / "x.csv"
    bad.write_text("id,other\n1,2\n")
    with pytest.raises(ValueError, match="header must be"):
        load_truth(bad)


def test_band_metrics_are_cumulative():
    truth = Truth({("a", "b"), ("c", "d")}, {("a", "c"), ("e", "f")})
    pred = {("a", "b"): "same", ("a", "c"): "very_similar", ("x", "y"): "same"}
    by_name = {m.name: m for m in _prf_by_band(pred, truth)}
    same = by_name["same or better"]
    assert (same.predicted, same.true_positives, same.precision, same.recall) == (1, 1, 1.0, 0.5)
    loose = by_name["similar or better"]
    assert (loose.predicted, loose.true_positives) == (2, 1)
    assert loose.precision == 0.5 and loose.f1 == pytest.approx(0.5)


def test_retrieval_metrics():
    truth = Truth({("a", "b"), ("a", "c")})
    ranked = {"a": ["x", "b", "c"], "b": ["a"], "c": ["y"]}
    r = _retrieval(ranked, truth)
    assert r["queries"] == 3
    assert r["recall@1"] == pytest.approx(1 / 3)
    assert r["recall@10"] == pytest.approx((1 + 1 + 0) / 3)
    ap_a = (1 / 2 + 2 / 3) / 2
    assert r["mAP"] == pytest.approx((ap_a + 1 + 0) / 3)


def test_evaluate_a_published_run(small_demo, tmp_path):
    from npimage.config import Settings
    from npimage.pipeline import settings_context
    from npimage.runner import run_pipeline

    settings = Settings().with_overrides(data_dir=tmp_path, fv=False)
    run_pipeline(settings_context("ev", str(small_demo.manifest), "r", settings), workers=1,
                 report=False)
    groups = tmp_path / "groups.csv"
    with small_demo.truth.open() as src, groups.open("w", newline="") as dst:
        w = csv.writer(dst)
        w.writerow(["image_id", "group_id"])
        for r in csv.DictReader(src):
            w.writerow([r["image_id"], r["group_id"]])
    ev = evaluate(tmp_path / "warehouse.duckdb", "ev", load_truth(groups))
    overall = {m.name: m for m in ev.images}["all stored"]
    assert overall.recall == 1.0 and overall.positives > 0
    assert ev.retrieval["recall@10"] == 1.0
    assert {m.name: m for m in ev.products}["all stored"].recall == 1.0
    with pytest.raises(UnknownClientError, match="no published run"):
        evaluate(tmp_path / "warehouse.duckdb", "nobody", load_truth(groups))
    # per kind, before and after verification (issue #12): every planted picture counted
    kinds = by_kind(tmp_path / "warehouse.duckdb", "ev", small_demo.truth)
    planted = [k for k in kinds if k.expected]
    assert sum(k.pairs for k in planted) == small_demo.n_planted
    assert all(k.found <= k.pairs and k.same_after <= k.ret_after for k in kinds)
    assert "before -> after" in format_by_kind(kinds)
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    checked, moved, missing = con.execute(
        "SELECT count(*) FILTER (verified), count(*) FILTER (score <> score_before), "
        "count(*) FILTER (verified AND verify_reason IS NULL) FROM image_matches").fetchone()
    con.close()
    assert checked > 0 and missing == 0 and moved <= checked
