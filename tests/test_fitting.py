"""fitting: curves, weight search and metrics on synthetic components; fit-weights on a real
run of the demo catalogue; the shipped default weights and their file format; the shipped
weights on real photos (../shared/datasets, skipped when absent)."""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import dataset

from npimage.matching.scoring import (
    DEFAULT_SOURCE,
    DEFAULT_WEIGHTS_FILE,
    IDENTITY,
    Scorer,
    Weights,
    load_weights,
)
from npimage.quality import curves as qcurves
from npimage.quality import fitting
from npimage.quality import pairs as qpairs
from npimage.quality import search as qsearch

BANDS = {"same": 0.99, "retouched": 0.95}


def _flip(h: np.ndarray, bits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copies of uint64 hashes (n, 3) with `bits` (n,) random bits flipped in each hash."""
    out = h.copy()
    for r in range(len(h)):
        for c in range(3):
            for b in rng.choice(64, size=int(bits[r]), replace=False):
                out[r, c] ^= np.uint64(1) << np.uint64(b)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(seed: int = 0, photos: int = 120, products: int = 12, dim: int = 24,
              lookalike: bool = False) -> fitting.Labelled:
    """Photos of products (vectors near their product's centre, random hashes); the first
    60 photos get one same-image edit (0-1 bits, cosine ~0.99) and one retouch (3-6
    bits, cosine ~0.96). With `lookalike`, one extra photo has the hashes of photo 0
    but the vector of another product (a look-alike pack: hashes alone cannot tell)."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(products, dim))
    product = np.arange(photos) % products
    fv = _unit(centre[product] + 0.9 * rng.normal(size=(photos, dim)))
    hashes = rng.integers(0, 2**63, size=(photos, 3), dtype=np.int64).view(np.uint64)
    src = np.arange(60)
    same_fv = _unit(fv[src] + 0.02 * rng.normal(size=(60, dim)))
    ret_fv = _unit(fv[src] + 0.07 * rng.normal(size=(60, dim)))
    same_h = _flip(hashes[src], rng.integers(0, 2, 60), rng)
    ret_h = _flip(hashes[src], rng.integers(3, 7, 60), rng)
    parts_h, parts_fv = [hashes, same_h, ret_h], [fv, same_fv, ret_fv]
    group = np.concatenate([np.arange(photos), src, src])
    prod = np.concatenate([product, product[src], product[src]])
    if lookalike:
        parts_h.append(hashes[:1])
        parts_fv.append(_unit(centre[[5]] + 0.9 * rng.normal(size=(1, dim))))
        group, prod = np.r_[group, photos], np.r_[prod, 5]
    n = len(group)
    pos_j = np.r_[photos + np.arange(60), photos + 60 + np.arange(60)]
    return fitting.Labelled(
        ids=np.array([f"i{k:04d}" for k in range(n)], dtype=object),
        hashes=np.concatenate(parts_h), fv=np.concatenate(parts_fv),
        sha=np.arange(n, dtype=np.int64), size=np.full(n, 1000, np.int64),
        group=group.astype(np.int64), product=prod.astype(np.int64),
        query=np.r_[np.ones(photos, bool), np.zeros(n - photos, bool)],
        pos=(np.r_[src, src], pos_j, np.r_[np.zeros(60), np.ones(60)].astype(np.int8),
             np.array(["recompress"] * 60 + ["crop"] * 60, dtype=object)))


FAST = fitting.FitOptions(floors=(0.5, 0.8), same_quantiles=(0.01,),
                          fv_same_quantiles=(0.0, 0.01), retouched_quantiles=(0.05,))


# -- pieces -------------------------------------------------------------------------------

def test_simplex_covers_the_grid():
    w = qsearch.simplex(0.05, True)
    assert w.shape == (1771, 4) and np.allclose(w.sum(axis=1), 1)
    assert len(np.unique(w, axis=0)) == 1771
    h = qsearch.simplex(0.05, False)
    assert h.shape == (231, 4) and np.all(h[:, 3] == 0) and np.allclose(h.sum(axis=1), 1)


def test_curve_knots_are_increasing_even_when_classes_overlap():
    # retouched p5 below the 99.99th percentile of different products: the knots must
    # still increase, the 0.95 knot moving above the 0.90 one
    curve = qcurves.curve_knots([0.5, 0.8, 0.9, 0.85, 0.97], floor=0.75, is_hash=True)
    xs, ys = zip(*curve, strict=True)
    assert list(xs) == sorted(xs) and len(set(xs)) == len(xs)
    assert list(ys) == sorted(ys) and ys[0] == 0.75 and ys[-1] == 1.0
    assert dict(curve)[0.97] == 0.99
    # and never reach 1 before the last knot
    top = qcurves.curve_knots([0.5, 0.9, 1.0, 1.0, 1.0], floor=0.5, is_hash=False)
    assert top[0] == (0.0, 0.0) and all(x < 1.0 for x, _ in top[:-1])


def test_band_recall_is_the_worst_of_all_and_each_large_kind():
    band = np.zeros(50, np.int8)
    kind = np.array(["a"] * 25 + ["b"] * 20 + ["tiny"] * 5, dtype=object)
    hit = np.ones(50, bool)
    hit[:2] = False  # a: 23/25
    hit[45:] = False  # tiny: 0/5, too few pairs to count on its own
    assert qsearch.band_recall(hit, band, kind, 0) == pytest.approx(43 / 50)
    hit[45:] = True
    assert qsearch.band_recall(hit, band, kind, 0) == pytest.approx(23 / 25)
    assert qsearch.band_recall(hit, band, kind, 1) == 1.0  # no pair expected there


# -- the search -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted():
    ls = synthetic(lookalike=True)
    return ls, fitting.fit(ls, FAST)


def test_fit_meets_the_targets_on_separable_data(fitted):
    _, result = fitted
    m = result.metrics["fv"]
    assert m.same == 1.0 and m.retouched == 1.0
    assert m.neg_same == 0
    assert m.top1 >= 0.95 and m.queries == 120
    assert sum(result.weights.normalised(True).values()) == pytest.approx(1.0)
    for curve in result.weights.curves.values():
        xs, ys = zip(*curve, strict=True)
        assert list(xs) == sorted(xs) and list(ys) == sorted(ys)


def test_hard_constraint_keeps_a_lookalike_out_of_same(fitted):
    """Hashes alone must put the look-alike (identical hashes to photo 0 and close to its
    edit) in `same`; with FV the fit has to give the vectors enough weight to pull it out."""
    ls, result = fitted
    assert result.metrics["hashes only"].neg_same >= 1
    assert result.metrics["fv"].neg_same == 0
    lookalike = qpairs.pair_components(ls, np.array([0]), np.array([len(ls) - 1]))
    assert qpairs.pair_scores(lookalike, Scorer(result.weights, False))[0] == 1.0
    assert qpairs.pair_scores(lookalike, Scorer(result.weights, True))[0] < 0.99


def test_metrics_match_scores_computed_directly(fitted):
    ls, result = fitted
    scorer = Scorer(result.weights, True)
    i, j, band, _ = ls.pos
    bits = np.bitwise_count(ls.hashes[i] ^ ls.hashes[j])
    cos = np.einsum("ij,ij->i", ls.fv[i], ls.fv[j])
    direct = scorer.score(bits.astype(np.intp), cos)
    lower = np.array([BANDS["same"], BANDS["retouched"]])[band]
    assert result.metrics["fv"].same_all == pytest.approx(np.mean(direct[band == 0] >= 0.99))
    assert result.metrics["fv"].retouched_all == pytest.approx(
        np.mean(direct[band == 1] >= lower[band == 1]))


def test_pruned_top1_equals_exact_top1_when_nothing_is_pruned():
    ls = synthetic(seed=3, photos=60, products=6)
    opt = replace(FAST, prune=10_000)
    data = qcurves.classes(ls, opt)
    curves = qcurves.fit_curves(qcurves.class_quantiles(data, opt),
                                qcurves.Shape(0.8, 0.01, 0.01, 0.05), opt)
    w = qsearch.simplex(0.25, True)
    grid = qsearch._grid_top1(data.cand, qcurves.calibrate(data.raw["cand"], curves), w)
    for k in range(len(w)):
        weights = Weights(*map(float, w[k]), curves=curves, hashes_only=None)
        exact, n = qpairs.top1_exact(ls, Scorer(weights, True))
        assert n == 60 and grid[k] == pytest.approx(exact), w[k]


def test_restrict_keeps_labels_inside_the_subset():
    ls = synthetic()
    keep = ls.group % 2 == 0
    sub = ls.restrict(keep)
    assert len(sub) == int(keep.sum())
    i, j, _, _ = sub.pos
    assert np.all(sub.group[i] == sub.group[j])
    assert len(i) == int(np.sum(keep[ls.pos[0]]))


# -- a real run -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_run(small_demo, tmp_path_factory):
    """The small demo catalogue through the real pipeline, hashes only (fast)."""
    from npimage.config import Settings
    from npimage.pipeline import settings_context
    from npimage.runner import run_pipeline

    data = tmp_path_factory.mktemp("fitrun")
    settings = Settings().with_overrides(data_dir=data, fv=False)
    run_pipeline(settings_context("fit", str(small_demo.manifest), "r1", settings), workers=1,
                 report=False)
    return data


def test_fit_weights_on_a_published_run(demo_run, small_demo, tmp_path):
    result = fitting.fit_weights(demo_run, "fit", small_demo.truth)
    assert result.record["client"] == "fit" and result.record["run_id"] == "r1"
    assert result.record["fv_model"] is None and set(result.metrics) == {"hashes only"}
    planted = sum(1 for r in csv.DictReader(small_demo.truth.open()) if r["expected_band"])
    assert sum(result.record["positives"].values()) == planted
    out = tmp_path / "w.json"
    out.write_text(json.dumps(result.document()))
    loaded = load_weights(out)
    assert loaded.source == str(out) and loaded.hashes_only is not None
    assert np.allclose(Scorer(loaded, False).hash_tables, Scorer(result.weights, False).hash_tables)
    recorded = json.loads(out.read_text())["fit"]["metrics"]["hashes only"]
    assert recorded["same_recall"] == round(result.metrics["hashes only"].same_all, 4)
    from npimage.errors import UnknownClientError

    with pytest.raises(UnknownClientError, match="no published run"):
        fitting.fit_weights(demo_run, "nobody", small_demo.truth)


def test_pairs_truth_gives_explicit_negatives(demo_run, small_demo, tmp_path):
    rows = [r for r in csv.DictReader(small_demo.truth.open())]
    planted = [r for r in rows if r["expected_band"]]
    alone = [r["image_id"] for r in rows if not r["expected_band"]][:6]
    pairs = tmp_path / "pairs.csv"
    with pairs.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "match_image_id", "label"])
        w.writerows([r["group_id"], r["image_id"], r["expected_band"]] for r in planted)
        w.writerows([a, b, "0"] for a, b in itertools.pairwise(alone))
    sigs, products, _ = fitting.read_run(demo_run, "fit")
    ls = fitting.labelled_set(sigs, products, pairs)
    assert ls.group is None and len(ls.neg[0]) == 5 and len(ls.pos[0]) == len(planted)
    result = fitting.fit(ls, FAST)
    assert result.metrics["hashes only"].negatives == 5
    assert result.metrics["hashes only"].queries == 0


def test_cli_fit_weights_writes_a_weights_file_the_run_reads(demo_run, small_demo, tmp_path):
    """The real `npimage fit-weights`: its output is the library's fit, to the byte."""
    from helpers import run_cli

    out = tmp_path / "fitted.json"
    args = ["fit-weights", "--client", "fit", "--truth", str(small_demo.truth),
            "--data-dir", str(demo_run), "--step", "0.1"]
    proc = run_cli(*args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    expected = fitting.fit_weights(demo_run, "fit", small_demo.truth, fitting.FitOptions(step=0.1))
    assert out.read_text() == expected.to_json()
    assert proc.stdout.startswith(fitting.format_metrics(expected.metrics))
    assert "targets met" in proc.stdout and load_weights(out).hashes_only is not None
    assert json.loads(out.read_text())["fit"]["options"]["step"] == 0.1
    bad = run_cli(*args[:-1], "0.3")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_the_fit_scores_pairs_exactly_as_compare_does(demo_run, small_demo):
    """No parallel copy of the score: the fit's pair scores are compare's, to the bit."""
    from npimage.matching import compare as cmp

    sigs, products, _ = fitting.read_run(demo_run, "fit")
    ls = fitting.labelled_set(sigs, products, small_demo.truth)
    scorer = Scorer(load_weights(None), False)
    arrays = cmp.arrays_from_table(sigs, False)
    where = {image_id: k for k, image_id in enumerate(arrays.ids)}
    rows = np.array([where[i] for i in ls.ids])
    i, j = ls.pos[0], ls.pos[1]
    fit_scores = qpairs.pair_scores(qpairs.pair_components(ls, i, j), scorer)
    assert np.array_equal(fit_scores, cmp.pair_scores(arrays, arrays, rows[i], rows[j], scorer))


def test_an_unknown_label_is_the_same_clear_error_for_fitting_and_evaluate(demo_run, small_demo,
                                                                          tmp_path):
    """Was: evaluate counted an unknown label as a positive, fit-weights refused it."""
    from npimage.errors import TruthFileError
    from npimage.quality.evaluate import load_truth

    rows = [r for r in csv.DictReader(small_demo.truth.open()) if r["expected_band"]][:3]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_id,match_image_id,label\n" + "".join(
        f"{r['group_id']},{r['image_id']},{label}\n"
        for r, label in zip(rows, ("same", "1", "maybe"), strict=True)))
    sigs, products, _ = fitting.read_run(demo_run, "fit")
    for read in (lambda: fitting.labelled_set(sigs, products, pairs), lambda: load_truth(pairs)):
        with pytest.raises(TruthFileError, match=r"pairs.csv:4: unknown label 'maybe'"):
            read()
    groups = tmp_path / "groups.csv"
    groups.write_text("image_id,group_id,expected_band\na,g,same\nb,g,nearly\n")
    with pytest.raises(TruthFileError, match=r"groups.csv:3: unknown expected_band 'nearly'"):
        fitting.labelled_set(sigs, products, groups)


def test_truth_with_a_bad_header_is_refused(demo_run, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    sigs, products, _ = fitting.read_run(demo_run, "fit")
    with pytest.raises(ValueError, match="header"):
        fitting.labelled_set(sigs, products, bad)


# -- the shipped weights and the file format -----------------------------------------------

def test_default_weights_come_from_the_shipped_file():
    doc = json.loads(DEFAULT_WEIGHTS_FILE.read_text())
    w = Weights()
    assert w.source == DEFAULT_SOURCE == load_weights(None).source
    assert {c: getattr(w, c) for c in ("dah", "ddh", "dph", "dfv")} == doc["weights"]
    assert w.hashes_only is not None
    assert Scorer(w, False).weights == pytest.approx(
        {c: v / sum(doc["hashes_only"]["weights"].values())
         for c, v in doc["hashes_only"]["weights"].items()})
    assert np.allclose(Scorer(load_weights(None), True).hash_tables, Scorer(w, True).hash_tables)


#: The one target the shipped fit misses (docs/QUALITY.md "Refit on the version-2 hashes"):
#: a burst shot of one shelf, grocery Passion-Fruit_016/_026 (1, 2, 2 bits, cosine 0.993),
#: scores >= 0.99 at every weight point of the fit's curves; the fit that keeps it out costs
#: the demo 5 planted duplicates. Pinned so that any change of it is looked at again.
KNOWN_MISS = {"no different photo in same": 1}


def test_shipped_fit_record_says_how_and_met_the_targets():
    fit = json.loads(DEFAULT_WEIGHTS_FILE.read_text())["fit"]
    assert "bench/quality.py" in fit["command"] and "seed" in fit["data"]
    metrics = fit["metrics"]["fv"]
    missed = {k for k, met in metrics["targets_met"].items() if not met}
    assert missed == set(KNOWN_MISS), metrics
    assert metrics["different_photos_in_same"] == KNOWN_MISS["no different photo in same"]


def test_weights_file_round_trip_and_checks(tmp_path):
    w = Weights(dah=0.1, ddh=0.2, dph=0.3, dfv=0.4, hashes_only=None)
    path = tmp_path / "w.json"
    path.write_text(w.to_json())
    back = load_weights(path)
    assert back.hashes_only is None and back.curves == w.curves
    assert Scorer(back, False).weights == pytest.approx({"dah": 1 / 6, "ddh": 2 / 6, "dph": 3 / 6})
    path.write_text(json.dumps({"weights": {"dah": 1.0}}))  # no curves: identity, weight 0
    only = load_weights(path)
    assert only.curves["dph"] == IDENTITY and Scorer(only, True).weights["dfv"] == 0.0
    path.write_text(json.dumps({"weights": {"dzz": 1.0}}))
    with pytest.raises(ValueError, match="unknown component"):
        load_weights(path)
    path.write_text(json.dumps({"weights": {"dah": 1.0}, "curves": {"dah": [[0, 1], [1, 0]]}}))
    with pytest.raises(ValueError, match="increasing"):
        load_weights(path)


# -- the shipped weights on real photos -------------------------------------------------------

PDQ_SAME = ("modes/original.jpg", "modes/RGB.jpg", "modes/CMYK.jpg", "modes/RGBA.png",
            "modes/P.png", "bridge-mods/shrink-a-little.jpg", "bridge-mods/shrink-a-lot.jpg")
PDQ_RETOUCHED = ("bridge-mods/blur-a-little.jpg", "bridge-mods/sharpen-a-little.jpg",
                 "bridge-mods/high-contrast.jpg", "modes/L.png")


def _hashes(paths) -> np.ndarray:
    from npimage.ingest.decode import decode
    from npimage.matching.hashing import image_hashes

    return np.array([image_hashes(decode(p.read_bytes(), 250_000_000).rgb) for p in paths],
                    np.int64).view(np.uint64)


def test_shipped_weights_on_real_photos_without_fv():
    """pdq-edits: versions of one photo reach their band; grocery Packages: different
    photos of look-alike cartons never reach `same` (hashes only: no model needed)."""
    pdq = dataset("pdq-edits")
    packages = dataset("grocery-store", "dataset", "train", "Packages")
    scorer = Scorer(Weights(), False)
    orig = _hashes([pdq / "bridge-mods" / "aaa-orig.jpg"])
    for names, lower in ((PDQ_SAME, 0.99), (PDQ_RETOUCHED, 0.95)):
        bits = np.bitwise_count(_hashes([pdq / n for n in names]) ^ orig)
        score = scorer.score(bits.astype(np.intp), None)
        assert np.all(score >= lower), dict(zip(names, score.round(4), strict=True))
    photos = sorted(packages.rglob("*.jpg"))[::8]
    h = _hashes(photos)
    bits = np.bitwise_count(h[:, None, :] ^ h[None, :, :])
    score = scorer.score(bits.astype(np.intp), None)
    np.fill_diagonal(score, 0)
    assert len(photos) > 100 and score.max() < 0.99
