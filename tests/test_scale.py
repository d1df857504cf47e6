"""compare at scale, checked small: the candidate scan and both scoring paths vs brute force.

The brute force here shares no code with npimage.matching.compare's candidate generation: every
pair is scored with Scorer.score on the full distance matrix (cosines by a matrix
product), then top-k by (score desc, catalogue row asc).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from npimage.bands import round_scores
from npimage.fv.tflite import bf16_supported
from npimage.matching import bf16
from npimage.matching import compare as cmp
from npimage.matching.kernels import cosines
from npimage.matching.scoring import Scorer, load_weights

#: The POC's weights and hash calibration (knots at the bands' limits: 32, 22, 16, 11 and
#: 4 bits), written out in full so that these tests do not depend on the shipped defaults.
POC_WEIGHTS = {"dah": 0.15, "ddh": 0.30, "dph": 0.25, "dfv": 0.30}
POC_HASH_CURVE = [[0.0, 0.0], [0.5, 0.5], [42 / 64, 0.82], [48 / 64, 0.90], [53 / 64, 0.95],
                  [60 / 64, 0.99], [1.0, 1.0]]
_WEIGHTS_DIR = Path(tempfile.mkdtemp(prefix="npimage-test-weights-"))


def poc_scorer(use_fv: bool, **weights: float) -> Scorer:
    """A Scorer with the POC's curves and weights (or the weights given), via a JSON file."""
    doc = {"weights": {**POC_WEIGHTS, **weights},
           "curves": {"dah": POC_HASH_CURVE, "ddh": POC_HASH_CURVE, "dph": POC_HASH_CURVE,
                      "dfv": [[0.0, 0.0], [1.0, 1.0]]}}
    path = _WEIGHTS_DIR / f"{hashlib.sha1(json.dumps(doc).encode()).hexdigest()}.json"
    path.write_text(json.dumps(doc))
    return Scorer(load_weights(path), use_fv)

#: Hash distances of the grid: fine where the bands' limits are, coarse beyond.
LEVELS = (0, 6, 12, 17, 22, 27, 33, 44, 64)


def grid_pairs(dim: int | None, seed: int = 0, cos_one: bool = True) -> cmp.SignatureArrays:
    """Originals and copies at every distance triple of a grid (LEVELS in each hash).

    Row 2i is an original, row 2i+1 its copy with the i-th triple of hash distances; with
    FV the copy has the original's vector (cosine 1, the most FV can add) or, with
    cos_one False, a random one. The grid crosses the feasible boundary of every scorer.
    """
    rng = np.random.default_rng(seed)
    levels = np.array(LEVELS)
    triples = np.array(np.meshgrid(levels, levels, levels, indexing="ij")).reshape(3, -1).T
    n = 2 * len(triples)
    hashes = rng.integers(0, 2**63, size=(n, 3), dtype=np.int64).view(np.uint64)
    for i, t in enumerate(triples):
        for c in range(3):
            bits = rng.permutation(64)[: t[c]].astype(np.uint64)
            mask = np.bitwise_or.reduce(np.uint64(1) << bits) if len(bits) else np.uint64(0)
            hashes[2 * i + 1, c] = hashes[2 * i, c] ^ mask
    fv = None
    if dim:
        fv = rng.normal(size=(n, dim)).astype(np.float32)
        if cos_one:
            fv[1::2] = fv[0::2]
        fv = (fv / np.linalg.norm(fv, axis=1, keepdims=True)).astype(np.float16)
    sha = rng.integers(-2**62, 2**62, size=n, dtype=np.int64)
    size = np.full(n, 5000, np.int64)
    ids = np.array([f"g{i:06d}" for i in range(n)], dtype=object)
    return cmp.SignatureArrays(ids, np.arange(n, dtype=np.int64), sha, size, hashes, fv)


def mixed(n: int, dim: int | None, seed: int = 0) -> cmp.SignatureArrays:
    """Random signatures with near copies, exact copies and a picture stored many times."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=(n, 3), dtype=np.int64).view(np.uint64)
    fv = rng.normal(size=(n, dim)).astype(np.float32) if dim else None
    src = rng.integers(0, n, size=n // 3)
    dst = rng.integers(0, n, size=n // 3)
    for s, d in zip(src, dst, strict=True):
        k = rng.integers(0, 24)
        flips = np.uint64(0)
        for b in rng.permutation(64)[:k]:
            flips |= np.uint64(1) << np.uint64(b)
        hashes[d] = hashes[s] ^ flips
        if fv is not None:
            fv[d] = fv[s] + rng.uniform(0, 0.6) * rng.normal(size=dim)
    sha = rng.integers(-2**62, 2**62, size=n, dtype=np.int64)
    size = rng.integers(1000, 9000, size=n).astype(np.int64)
    many = rng.choice(n, 40, replace=False)  # one placeholder picture, 40 files
    sha[many], size[many] = sha[many[0]], size[many[0]]
    hashes[many] = hashes[many[0]]
    if fv is not None:
        fv = (fv / np.linalg.norm(fv, axis=1, keepdims=True)).astype(np.float16)
    ids = np.array([f"m{i:06d}" for i in range(n)], dtype=object)
    return cmp.SignatureArrays(ids, np.arange(n, dtype=np.int64), sha, size, hashes, fv)


def brute_scores(q: cmp.SignatureArrays, c: cmp.SignatureArrays, scorer: Scorer) -> np.ndarray:
    """Every pair's score with Scorer.score (independent of compare's code paths)."""
    ham = np.bitwise_count(q.hashes[:, None, :] ^ c.hashes[None, :, :])
    cos = None
    if scorer.use_fv:
        qf, cf = q.fv.astype(np.float64), c.fv.astype(np.float64)
        qf /= np.linalg.norm(qf, axis=1, keepdims=True)
        cf /= np.linalg.norm(cf, axis=1, keepdims=True)
        cos = qf @ cf.T
    score = scorer.score(ham, cos).astype(np.float32)
    score[(q.sha[:, None] == c.sha[None, :]) & (q.size[:, None] == c.size[None, :])] = 1.0
    score[q.rows[:, None] == c.rows[None, :]] = -1.0
    return round_scores(score)


def brute_top_k(q, c, scorer, k, threshold, both_ways=False) -> dict[tuple[str, str], float]:
    """{(query id, match id): score} of the exact top-k (and column top-k, both ways)."""
    score = brute_scores(q, c, scorer)
    qi, ci = np.nonzero(score >= threshold)
    sc = score[qi, ci]
    sel = cmp.top_k_per_query(qi, c.rows[ci], sc, k)
    if both_ways:
        sel = np.union1d(sel, cmp.top_k_per_query(ci, q.rows[qi], sc, k))
    return {(q.ids[a], c.ids[b]): float(s) for a, b, s in zip(qi[sel], ci[sel], sc[sel],
                                                              strict=True)}


def as_pairs(table: pa.Table) -> dict[tuple[str, str], float]:
    return {(r["image_id"], r["match_image_id"]): r["score"] for r in table.to_pylist()}


def assert_same(got: dict, want: dict) -> None:
    """Same pairs; scores equal to float32 rounding of the cosine (1e-6)."""
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, (missing[:5], extra[:5])
    for key, s in want.items():
        assert got[key] == pytest.approx(s, abs=2e-6), key


SCORERS = [
    ("hashes", lambda: poc_scorer(False), 0.82),
    ("hashes-high", lambda: poc_scorer(False), 0.95),
    ("fv", lambda: poc_scorer(True), 0.82),
    ("fv-heavy", lambda: poc_scorer(True, dah=0.1, ddh=0.1, dph=0.1, dfv=0.7), 0.9),
]


@pytest.mark.parametrize("method", ["compiled", "numpy"])
@pytest.mark.parametrize(("name", "make", "threshold"), SCORERS, ids=[s[0] for s in SCORERS])
def test_scan_returns_exactly_the_feasible_pairs(name, make, threshold, method):
    scorer = make()
    sigs = grid_pairs(8 if scorer.use_fv else None)
    bound = cmp.hash_bound(scorer, threshold)
    qi, ci = cmp.hash_candidates(sigs.hashes, sigs.hashes, bound, method=method)
    got = set(zip(qi.tolist(), ci.tolist(), strict=True))
    ham = np.bitwise_count(sigs.hashes[:, None, :] ^ sigs.hashes[None, :, :])
    want = set(zip(*(x.tolist() for x in np.nonzero(
        bound.feasible[ham[..., 0], ham[..., 1], ham[..., 2]])), strict=True))
    assert got == want
    qualifying = set(zip(*(x.tolist() for x in np.nonzero(
        brute_scores(sigs, sigs, scorer) >= threshold)), strict=True))
    same = {(a, b) for a, b in qualifying if sigs.sha[a] == sigs.sha[b]}
    assert qualifying - same <= got  # every qualifying pair is a candidate
    copies = {(a, a + 1) for a in range(0, len(sigs), 2)}
    assert 0 < len(copies & qualifying) < len(copies)  # the grid crosses the boundary
    assert len(copies & got) < len(copies)  # and the bound prunes


def test_fv_bound_keeps_pairs_that_only_fv_lifts():
    """Hashes far apart, vectors identical: FV alone lifts these pairs over the threshold."""
    scorer = poc_scorer(True, dah=0.1, ddh=0.1, dph=0.1, dfv=0.7)
    sigs = grid_pairs(8)
    score = brute_scores(sigs, sigs, scorer)
    ham = np.bitwise_count(sigs.hashes[0::2] ^ sigs.hashes[1::2]).sum(axis=1)
    lifted = [i for i in range(len(ham)) if ham[i] > 60 and score[2 * i, 2 * i + 1] >= 0.9]
    assert lifted
    got = as_pairs(cmp.compare(sigs, sigs, scorer, top_k=5, threshold=0.9))
    for i in lifted:
        assert (sigs.ids[2 * i], sigs.ids[2 * i + 1]) in got


def test_custom_curves_and_weights_file(tmp_path):
    """A fitted weights file with a non-linear FV curve: the bound follows the tables."""
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({
        "weights": {"dah": 0.1, "ddh": 0.4, "dph": 0.3, "dfv": 0.2},
        "curves": {"dfv": [[0.0, 0.0], [0.5, 0.2], [0.8, 0.9], [1.0, 1.0]],
                   "ddh": [[0.0, 0.0], [0.5, 0.4], [0.75, 0.85], [1.0, 1.0]]},
    }))
    scorer = Scorer(load_weights(path), True)
    sigs = mixed(700, 12, seed=5)
    got = cmp.compare(sigs, sigs, scorer, top_k=4, threshold=0.85)
    assert got.num_rows > 100
    assert_same(as_pairs(got), brute_top_k(sigs, sigs, scorer, 4, 0.85))


def small_tiles(monkeypatch, tile: int = 512, query_block: int = 96) -> None:
    """Several tiles and query blocks, so that threads and reductions are exercised."""
    monkeypatch.setattr(cmp, "CATALOGUE_TILE", tile)
    monkeypatch.setattr(cmp, "MIN_TILE", 1)
    monkeypatch.setattr(cmp, "QUERY_BLOCK", query_block)


@pytest.mark.parametrize("dim", [None, 16])
@pytest.mark.parametrize("path", ["numpy-scan", "compiled-scan", "dense", "dense-top-k",
                                  "dense-few-queries", "dense-bf16"])
@pytest.mark.parametrize("both_ways", [False, True])
def test_compare_equals_brute_force_on_every_path(monkeypatch, dim, path, both_ways):
    small_tiles(monkeypatch, query_block=12 if path == "dense-few-queries" else 96)
    if path == "dense-bf16":  # cosines in bfloat16 select, exact scores decide
        if not bf16_supported():
            pytest.skip("this CPU has no bfloat16 (AMX or AVX512-BF16): path not taken here")
        monkeypatch.setenv("NPIMAGE_COMPARE_BF16", "1")
    else:
        monkeypatch.setenv("NPIMAGE_COMPARE_BF16", "0")
    if path.startswith("dense"):
        monkeypatch.setattr(cmp, "SPARSE_MAX_DENSITY", {True: 0.0, False: 0.0})
    if path == "dense-top-k":  # every dense block reduced by matrix top-k
        monkeypatch.setattr(cmp, "DENSE_PER_QUERY", 0)
        monkeypatch.setattr(cmp, "DENSE_MIN_CAPACITY", 0)
    if path == "compiled-scan":
        monkeypatch.setattr(cmp, "NUMPY_SCAN_PAIRS", 0)
    scorer = poc_scorer(dim is not None)
    sigs = mixed(1500, dim, seed=1)
    queries = sigs.take(np.arange(0, 1500, 2))
    got = cmp.compare(queries, sigs, scorer, top_k=5, threshold=0.82, block_size=200,
                      both_ways=both_ways)
    want = brute_top_k(queries, sigs, scorer, 5, 0.82, both_ways)
    assert len(want) > 300
    assert_same(as_pairs(got), want)


def test_low_threshold_goes_dense_and_stays_exact():
    """At a threshold random pairs reach, tiles are scored densely: same top-k."""
    scorer = poc_scorer(False)
    assert cmp.hash_bound(scorer, 0.5).random_rate > cmp.SPARSE_MAX_DENSITY[False]
    sigs = mixed(600, None, seed=2)
    got = cmp.compare(sigs, sigs, scorer, top_k=3, threshold=0.5, block_size=64)
    assert_same(as_pairs(got), brute_top_k(sigs, sigs, scorer, 3, 0.5))


@pytest.mark.parametrize("dim", [None, 16])
def test_shards_merge_to_the_whole_top_k_with_ties(monkeypatch, dim):
    """Shards compared apart and merged = one compare: ties (40 copies) broken by row."""
    small_tiles(monkeypatch, tile=256)
    scorer = poc_scorer(dim is not None)
    sigs = mixed(1200, dim, seed=3)
    queries = sigs.take(np.arange(0, 1200, 3))
    whole = cmp.compare(queries, sigs, scorer, top_k=6, threshold=0.82, both_ways=True)
    parts = [cmp.compare(queries, sigs.slice(s, s + 350), scorer, top_k=6, threshold=0.82,
                         both_ways=True) for s in range(0, 1200, 350)]
    merged = pa.concat_tables(parts)
    row = {v: i for i, v in enumerate(sigs.ids.tolist())}
    qi = np.array([row[v] for v in merged["image_id"].to_pylist()])
    ci = np.array([row[v] for v in merged["match_image_id"].to_pylist()])
    sc = merged["score"].to_numpy()
    sel = np.union1d(cmp.top_k_per_query(qi, ci, sc, 6), cmp.top_k_per_query(ci, qi, sc, 6))
    assert as_pairs(merged.take(pa.array(sel))) == as_pairs(whole)


def test_picture_stored_many_times_yields_top_k_copies_only():
    scorer = poc_scorer(False)
    sigs = mixed(400, None, seed=4)
    qi, _ = cmp.same_bytes_pairs(sigs, sigs, k=5)
    assert len(qi) < 40 * 6 * 2 + 2 * len(sigs)  # not 40 x 40
    got = cmp.compare(sigs, sigs, scorer, top_k=5, threshold=0.82)
    groups = {}
    for i, s in enumerate(sigs.sha.tolist()):
        groups.setdefault(s, []).append(i)
    copies = max(groups.values(), key=len)
    assert len(copies) == 40
    rows = [r for r in got.to_pylist() if r["image_id"] == sigs.ids[copies[7]]]
    want = [sigs.ids[i] for i in copies if i != copies[7]][:5]
    assert [r["match_image_id"] for r in rows] == want
    assert all(r["score"] == 1.0 and r["same_bytes"] for r in rows)


def test_result_does_not_depend_on_threads_or_tiles(monkeypatch):
    scorer = poc_scorer(True)
    sigs = mixed(900, 16, seed=6)
    first = cmp.compare(sigs, sigs, scorer, top_k=4, threshold=0.82)
    small_tiles(monkeypatch, tile=128, query_block=64)
    monkeypatch.setattr(cmp, "NUMPY_SCAN_PAIRS", 0)
    monkeypatch.setattr(cmp, "compare_threads", lambda: 3)
    second = cmp.compare(sigs, sigs, scorer, top_k=4, threshold=0.82)
    assert first.equals(second)


def test_fv_upper_table_bounds_the_fv_term():
    """Every cosine's FV term is at most its bucket's entry (curve knots inside buckets)."""
    path = _WEIGHTS_DIR / "steep.json"
    path.write_text(json.dumps({"weights": {"dah": 0.2, "ddh": 0.2, "dph": 0.2, "dfv": 0.4},
                                "curves": {"dfv": [[0.0, 0.0], [0.30001, 0.05],
                                                   [0.30013, 0.9], [0.7, 0.95], [1.0, 1.0]]}}))
    scorer = Scorer(load_weights(path), True)
    table = cmp.fv_upper_table(scorer)
    cos = np.concatenate([np.linspace(-0.1, 1.0, 200_001, dtype=np.float32),
                          np.array([0.30001, 0.30013, 0.7], np.float32)])
    bucket = (np.clip(cos, 0, 1) * cmp.FV_STEPS).astype(np.int64)
    assert np.all(scorer.fv_term(cos) <= table[bucket] + 1e-7)
    assert table.max() == pytest.approx(0.4)


def test_cos_floor_passes_over_only_pairs_that_cannot_reach_the_cut():
    """Below the floor no hash distances lift a pair to the cut; at it, the best ones do."""
    scorer = poc_scorer(True, dah=0.1, ddh=0.1, dph=0.1, dfv=0.7)
    upper = cmp.fv_upper_table(scorer)
    tables = np.ascontiguousarray(scorer.hash_tables, np.float32)
    cut = np.float32(0.9 - cmp.SLACK)
    floor = cmp.cos_floor(upper, tables, cut)
    assert 0.0 < floor < 1.0
    best = np.float32(sum(np.float32(t.max()) for t in tables))
    below = np.nextafter(floor, np.float32(0.0))
    bucket = int(below * cmp.FV_STEPS)
    assert upper[:bucket + 1].max() + best < cut
    assert upper[int(floor * cmp.FV_STEPS)] + best >= cut
    assert cmp.cos_floor(upper, tables, np.float32(2.0)) == np.inf  # nothing can reach it


def test_bf16_cosines_stay_within_the_margin():
    """The bound dense_select widens bfloat16 cosines by holds with room (1280-d vectors,
    near copies included: the cosines near 1 where the bands are)."""
    if not bf16_supported():
        pytest.skip("this CPU has no bfloat16 (AMX or AVX512-BF16): not used here")
    rng = np.random.default_rng(11)
    q = cmp.unit_rows(np.abs(rng.normal(size=(300, 1280))).astype(np.float16))
    c = np.concatenate([q[:100] + 0.002 * rng.normal(size=(100, 1280)),
                        rng.normal(size=(400, 1280))]).astype(np.float16)
    cu = cmp.unit_rows(c)
    exact = q.astype(np.float64) @ cu.astype(np.float64).T
    err = np.abs(bf16.cosines(bf16.rows(q), cu) - exact)
    assert err.max() < bf16.MARGIN / 2, err.max()
    assert exact.max() > 0.99


def test_cosine_kernel_reads_float16_rows_exactly():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(50, 1280)).astype(np.float16)
    b = rng.normal(size=(60, 1280)).astype(np.float16)
    a[3] = 0  # a zero vector has cosine 0
    a[4, :50] = np.float16(3e-6)  # float16 subnormals are read exactly
    ai, bi = rng.integers(0, 50, 500), rng.integers(0, 60, 500)
    ai[:2] = [3, 4]
    got = cosines(a, b, ai, bi)
    x, y = a[ai].astype(np.float64), b[bi].astype(np.float64)
    with np.errstate(invalid="ignore"):
        want = np.nan_to_num(np.sum(x * y, 1) / np.linalg.norm(x, axis=1)
                             / np.linalg.norm(y, axis=1))
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(cosines(a.astype(np.float32), b.astype(np.float32), ai, bi),
                               want, atol=1e-6)


def test_arrays_from_table_keeps_float16_and_reads_sha_prefix():
    shas = ["00ff" * 16, "FFFFFFFFFFFFFFFF" + "0" * 48, "0123456789abcdef" + "9" * 48]
    table = pa.table({
        "image_id": ["a", "b", "c"], "sha256": shas, "size_bytes": [1, 2, 3],
        "ahash": [0, -1, 5], "dhash": [0, 1, 2], "phash": [3, 4, 5],
        "fv": pa.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], pa.list_(pa.float16())),
        "fv_model": ["m", "m", "m"],
    })
    arr = cmp.arrays_from_table(table.slice(0), use_fv=True, first_row=10)
    want = np.array([int(h[:16], 16) for h in shas], np.uint64).view(np.int64)
    np.testing.assert_array_equal(arr.sha, want)
    assert arr.fv.dtype == np.float16 and arr.fv.shape == (3, 2)
    assert arr.rows.tolist() == [10, 11, 12]
    assert arr.hashes[1, 0] == np.uint64(2**64 - 1)
    sliced = cmp.arrays_from_table(table.slice(1), use_fv=False)
    np.testing.assert_array_equal(sliced.sha, want[1:])


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("both_ways", [False, True])
def test_all_vs_all_scores_each_pair_once_with_the_same_result(monkeypatch, dense, both_ways):
    """Mirrored tiles (all-vs-all) give exactly what scoring both orientations gives."""
    small_tiles(monkeypatch, tile=300, query_block=128)
    if dense:
        monkeypatch.setattr(cmp, "SPARSE_MAX_DENSITY", {True: 0.0, False: 0.0})
    scorer = poc_scorer(True)
    sigs = mixed(1100, 16, seed=8)
    done = []
    mirrored = cmp.compare(sigs, sigs, scorer, top_k=5, threshold=0.82, both_ways=both_ways,
                           progress=done.append)
    assert sum(done) == len(sigs) ** 2
    monkeypatch.setattr(cmp, "SYMMETRIC", False)
    full = cmp.compare(sigs, sigs, scorer, top_k=5, threshold=0.82, both_ways=both_ways)
    assert mirrored.num_rows > 500
    assert as_pairs(mirrored) == as_pairs(full)
    assert_same(as_pairs(full), brute_top_k(sigs, sigs, scorer, 5, 0.82, both_ways))
