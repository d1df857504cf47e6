"""compare: blocked top-k equals brute force, shards merge to the single-shard result."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_scale import poc_scorer

from npimage.matching import compare as cmp


def synthetic(n: int, dim: int | None, seed: int = 0) -> cmp.SignatureArrays:
    """Random signatures where every 4th image is a near copy of the one before it."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=(n, 3), dtype=np.int64).view(np.uint64)
    fv = rng.normal(size=(n, dim)).astype(np.float32) if dim else None
    for i in range(1, n, 4):
        flips = np.uint64(1) << rng.integers(0, 64, size=3).astype(np.uint64)
        hashes[i] = hashes[i - 1] ^ flips
        if fv is not None:
            fv[i] = fv[i - 1] + 0.05 * rng.normal(size=dim)
    if fv is not None:
        fv /= np.linalg.norm(fv, axis=1, keepdims=True)
    sha = rng.integers(0, 2**62, size=n, dtype=np.int64)
    sha[2::8] = sha[1::8][: len(sha[2::8])]  # some byte-identical files
    size = np.full(n, 1000, np.int64)
    ids = np.array([f"img{i:05d}" for i in range(n)], dtype=object)
    return cmp.SignatureArrays(ids, np.arange(n, dtype=np.int64), sha, size, hashes, fv)


def brute_force(q, c, weights, k, threshold):
    """Full-matrix reference: every pair scored, then top-k by (score desc, row asc)."""
    s = cmp.score_block(q, c, weights)
    out = {}
    for i in range(len(q)):
        order = sorted((j for j in range(len(c)) if s[i, j] >= threshold),
                       key=lambda j: (-s[i, j], j))[:k]
        out[q.ids[i]] = [(c.ids[j], float(s[i, j])) for j in order]
    return out


def as_dict(table: pa.Table):
    out: dict[str, list] = {}
    for r in table.to_pylist():
        out.setdefault(r["image_id"], []).append((r["match_image_id"], r["score"]))
    return {k: sorted(v, key=lambda t: (-t[1], t[0])) for k, v in out.items()}


@pytest.mark.parametrize("dim", [None, 16])
def test_blocked_compare_equals_brute_force(dim):
    sigs = synthetic(300, dim)
    weights = poc_scorer(dim is not None)
    queries = sigs.take(np.arange(0, 300, 3))
    got = cmp.compare(queries, sigs, weights, top_k=5, threshold=0.8, block_size=37)
    want = brute_force(queries, sigs, weights, 5, 0.8)
    got_d = as_dict(got)
    assert got.num_rows > 50
    for qid, matches in want.items():
        assert [m for m, _ in got_d.get(qid, [])] == [m for m, _ in matches], qid
        np.testing.assert_allclose([s for _, s in got_d.get(qid, [])],
                                   [s for _, s in matches], atol=1e-5)


def test_no_self_match_and_identical_bytes_score_one():
    sigs = synthetic(64, None)
    table = cmp.compare(sigs, sigs, poc_scorer(False), top_k=10, threshold=0.5)
    rows = table.to_pylist()
    assert all(r["image_id"] != r["match_image_id"] for r in rows)
    same = [r for r in rows if r["same_bytes"]]
    assert same and all(r["score"] == 1.0 for r in same)


def test_shards_merge_to_single_shard_top_k():
    sigs = synthetic(400, 8, seed=3)
    weights = poc_scorer(True)
    queries = sigs.take(np.arange(0, 400, 2))
    whole = cmp.compare(queries, sigs, weights, top_k=4, threshold=0.7)
    parts = []
    for start in range(0, 400, 130):
        idx = np.arange(start, min(start + 130, 400))
        parts.append(cmp.compare(queries, sigs.take(idx), weights, top_k=4, threshold=0.7))
    merged = pa.concat_tables(parts)
    rows = merged.to_pylist()
    row_of = {f"img{i:05d}": i for i in range(400)}
    qi = np.array([row_of[r["image_id"]] for r in rows])
    ci = np.array([row_of[r["match_image_id"]] for r in rows])
    sel = cmp.top_k_per_query(qi, ci, merged["score"].to_numpy(), 4)
    assert as_dict(merged.take(pa.array(sel))) == as_dict(whole)


def test_planted_near_copies_are_found():
    sigs = synthetic(200, None)
    table = cmp.compare(sigs, sigs, poc_scorer(False), top_k=3, threshold=0.9)
    pairs = {(r["image_id"], r["match_image_id"]) for r in table.to_pylist()}
    for i in range(1, 200, 4):
        assert (sigs.ids[i], sigs.ids[i - 1]) in pairs


def test_fv_of_two_models_refused():
    table = pa.table({
        "image_id": ["a", "b"], "sha256": ["0" * 64, "1" * 64], "size_bytes": [1, 2],
        "ahash": [0, 1], "dhash": [0, 1], "phash": [0, 1],
        "fv": pa.array([[1.0, 0.0], [0.0, 1.0]], pa.list_(pa.float16())),
        "fv_model": ["m1", "m2"],
    })
    with pytest.raises(ValueError, match="different models"):
        cmp.arrays_from_table(table, use_fv=True)
