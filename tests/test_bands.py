"""Bands and threshold: the warehouse SQL, `npimage nearest` and the summaries agree.

Scores are float32; the merge SQL (real DuckDB, the shipped .sql files) and the Python
labels must put a score exactly at a limit in the same band, and keep a pair exactly at
the threshold, whatever the threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from npimage import bands
from npimage.matching.compare import MATCH_COLUMNS
from npimage.matching.merge import merge_image_matches, roll_up_products
from npimage.schemas import CATALOG, SIGNATURES


def _merge(tmp_path: Path, scores: list[float], threshold: float | None = None) -> dict:
    """Merge one shard holding pairs (q<i>, c<i>) with these float32 scores; band by pair."""
    n = len(scores)
    q = [f"q{i}" for i in range(n)]
    c = [f"c{i}" for i in range(n)]
    f32 = pa.array(np.asarray(scores, np.float32))
    zeros = pa.array(np.zeros(n, np.float32))
    shard = pa.table({"image_id": q, "match_image_id": c, "score": f32, "dah": zeros,
                      "ddh": zeros, "dph": zeros, "dfv": zeros, "same_bytes": [False] * n},
                     schema=MATCH_COLUMNS)
    pq.write_table(shard, tmp_path / "shard.parquet")
    pq.write_table(pa.table({"image_id": q}), tmp_path / "queries.parquet")
    sigs = [{"client_id": "c", "image_id": i} for i in q + c]
    (tmp_path / "signatures").mkdir()
    pq.write_table(pa.Table.from_pylist(sigs, SIGNATURES), tmp_path / "signatures" / "s.parquet")
    kwargs = {} if threshold is None else {"threshold": threshold}
    merge_image_matches([tmp_path / "shard.parquet"], None, tmp_path / "queries.parquet",
                        tmp_path / "signatures", tmp_path / "im.parquet", client_id="c",
                        run_id="r", top_k=10, **kwargs)
    catalog = pa.Table.from_pylist(
        [{"client_id": "c", "image_id": i, "product_id": f"p{i}", "uri": i} for i in q + c],
        CATALOG)
    pq.write_table(catalog, tmp_path / "catalog.parquet")
    roll_up_products(tmp_path / "im.parquet", tmp_path / "catalog.parquet",
                     tmp_path / "pm.parquet", client_id="c", run_id="r")
    images = pq.read_table(tmp_path / "im.parquet").to_pylist()
    products = pq.read_table(tmp_path / "pm.parquet").to_pylist()
    assert {(r["match_image_id"], r["image_id"], r["band"]) for r in images} == {
        (r["image_id"], r["match_image_id"], r["band"]) for r in images}  # both directions
    return {"images": {r["image_id"]: (r["score"], r["band"]) for r in images
                       if r["image_id"].startswith("q")},
            "products": {r["product_id"]: r["band"] for r in products
                         if r["product_id"].startswith("pq")}}


@pytest.mark.parametrize(("score", "band"), [(0.99, "same"), (0.95, "retouched"),
                                             (0.90, "very_similar"), (0.82, "similar")])
def test_a_score_exactly_at_a_limit_is_in_that_band_in_sql_and_python(tmp_path, score, band):
    """Was: 0.95 stored as very_similar while nearest said retouched; 0.90 stored as similar;
    0.82 kept by compare and dropped by merge."""
    out = _merge(tmp_path, [score])
    assert out["images"]["q0"][1] == band  # the warehouse (merge SQL)
    assert out["products"]["pq0"] == band  # the product roll-up SQL
    assert bands.band_codes(np.float32([score]))[0] == band  # npimage nearest
    assert bands.band_of(float(np.float32(score))) == band  # summaries, report


def test_sql_and_python_agree_around_every_limit(tmp_path):
    """Scores one float32 step either side of each limit, and random ones: one labelling."""
    edges = []
    for b in bands.BANDS:
        at = np.float32(b.lower)
        edges += [np.nextafter(at, np.float32(0)), at, np.nextafter(at, np.float32(1))]
    rng = np.random.default_rng(7)
    scores = np.concatenate([np.asarray(edges, np.float32),
                             rng.uniform(0.5, 1.0, 200).astype(np.float32)])
    out = _merge(tmp_path, scores.tolist(), threshold=0.5)
    sql = [out["images"][f"q{i}"][1] for i in range(len(scores))]
    assert sql == bands.band_codes(scores).tolist()
    assert sql == [bands.band_of(float(s)) for s in scores]
    assert sql[:3] == ["retouched", "same", "same"]  # 0.99 - 1 ulp is not `same`


def test_a_threshold_below_the_lowest_band_keeps_weak_pairs(tmp_path):
    """Was: --threshold 0.75 silently ignored, a pair at 0.75 dropped by merge."""
    out = _merge(tmp_path, [0.75, 0.749, 0.80, 0.85], threshold=0.75)
    assert out["images"]["q0"] == (pytest.approx(0.75), bands.WEAK)
    assert "q1" not in out["images"]  # below the threshold
    assert out["images"]["q2"][1] == bands.WEAK and out["images"]["q3"][1] == "similar"
    assert out["products"]["pq0"] == bands.WEAK


def test_the_threshold_cuts_inside_a_band_too(tmp_path):
    out = _merge(tmp_path, [0.91, 0.93, 0.97], threshold=0.93)
    assert sorted(out["images"]) == ["q1", "q2"]
    assert out["images"]["q1"][1] == "very_similar"


def test_the_default_threshold_is_the_lowest_band(tmp_path):
    out = _merge(tmp_path, [0.8199, 0.82])
    assert list(out["images"]) == ["q1"]
    assert bands.DEFAULT_THRESHOLD == bands.LOWEST == 0.82


def test_a_threshold_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        bands.sql_params(0.0)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        bands.check_threshold(1.5)
