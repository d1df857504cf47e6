"""Evaluation of family prediction: leave-one-product-out and planted misfiles.

Data: the grocery-store photos (npimage.families.grocery), family = coarse class.
A "product" is one photo: a catalogue entry with a single image, the case the stage sees
most. Its own image never votes for it (neighbours come from other products only), so
every prediction is leave-one-product-out. The hard variant holds out a whole fine class
(all photos of one brand or variety) at once: the family of a brand the catalogue has
never seen, predicted from the other brands of its family only.

Fitting and measuring are kept apart: the calibration (tau, alpha) and the misfiled
threshold are fitted on the train split (a catalogue of the train photos only) and
measured on the val split, predicted against the whole catalogue (train + val). The
family space (PCA) is fitted without labels on the whole catalogue, as a run does.

Misfiled: a seeded 5 % of all products are moved to a random other family; the flag's
threshold is the lowest probability reaching precision >= PRECISION_GOAL on the train
split; precision and recall are then counted on the val split, over several seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npimage.families.neighbours import fit_projection, top_k
from npimage.families.predict import (
    MISFILED_AT,
    Calibration,
    K,
    Votes,
    fit_calibration,
    predict,
)
from npimage.sqlfiles import load_sql

#: Share of products moved to a wrong family in the misfiled evaluation.
MISFILED_SHARE = 0.05
#: Precision the misfiled threshold is fitted for on the train split (goal: >= 0.8 on val).
PRECISION_GOAL = 0.9
#: Seeds of the misfiled evaluation.
SEEDS = tuple(range(10))


@dataclass
class FamilyReport:
    """Figures of one evaluation variant."""

    variant: str
    n_fit: int
    n_eval: int
    top1: float
    top3: float
    ece: float  # expected calibration error of the top-1 probability (10 bins)
    calibration: Calibration
    misfiled_threshold: float = float("nan")
    misfiled_precision: float = float("nan")
    misfiled_recall: float = float("nan")
    misfiled_planted: int = 0
    misfiled_flagged: int = 0
    #: the same counts at the shipped threshold MISFILED_AT instead of the fitted one
    default_precision: float = float("nan")
    default_recall: float = float("nan")
    per_family: dict[str, float] = field(default_factory=dict)


def _codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names, codes = np.unique(labels, return_inverse=True)
    return names, codes.astype(np.int64)


def _votes(space: np.ndarray, queries: np.ndarray, base: np.ndarray, group: np.ndarray,
           family: np.ndarray, k: int) -> Votes:
    """Votes for the products `queries` (photo indices) from the photos `base`."""
    sims, rows = top_k(space[queries], group[queries], space[base], group[base],
                       family[base] >= 0, k)
    fams = np.where(rows >= 0, family[base][np.maximum(rows, 0)], -1)
    return Votes(np.arange(len(queries), dtype=np.int64), sims, fams)


def ece(prob: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: mean |accuracy - confidence| over equal-width bins."""
    edges = np.minimum((prob * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = edges == b
        if m.any():
            total += m.sum() * abs(correct[m].mean() - prob[m].mean())
    return float(total / max(len(prob), 1))


def _threshold_for_precision(prob: np.ndarray, flagged_wrong: np.ndarray, planted: np.ndarray,
                             goal: float) -> float:
    """Lowest top-1 probability at which the flag's precision on these products >= goal."""
    cand = np.sort(np.unique(prob[flagged_wrong]))
    for t in cand:
        flag = flagged_wrong & (prob >= t)
        if flag.sum() and (flag & planted).sum() / flag.sum() >= goal:
            return float(t)
    return 1.0


def evaluate_families(fv: np.ndarray, family: np.ndarray, fine: np.ndarray, split: np.ndarray,
                      by_fine: bool = False, k: int = K, seeds: tuple[int, ...] = SEEDS,
                      misfiled_share: float = MISFILED_SHARE) -> FamilyReport:
    """Leave-one-product-out top-1/top-3 and the misfiled flag (see module docstring)."""
    names, fam = _codes(family)
    n_fam = len(names)
    space = fit_projection(fv).apply(fv)
    group = (_codes(fine)[1] if by_fine else np.arange(len(fv))).astype(np.int64)
    train = np.flatnonzero(split == "train")
    val = np.flatnonzero(split == "val")
    everything = np.arange(len(fv))

    fit_votes = _votes(space, train, train, group, fam, k)
    cal = fit_calibration(fit_votes, fam[train], n_fam)
    val_votes = _votes(space, val, everything, group, fam, k)
    pred = predict(val_votes, np.full(len(val), -1, np.int64), n_fam, cal)
    truth = fam[val]
    top1 = pred.top[:, 0] == truth
    top3 = (pred.top == truth[:, None]).any(axis=1)
    per_family = {str(names[f]): float(top1[truth == f].mean()) for f in np.unique(truth)}
    report = FamilyReport(
        variant="held out by fine class" if by_fine else "one product per photo",
        n_fit=len(train), n_eval=len(val), top1=float(top1.mean()), top3=float(top3.mean()),
        ece=ece(np.nan_to_num(pred.prob[:, 0]), top1), calibration=cal, per_family=per_family)
    _misfiled(report, space, fam, n_fam, group, train, val, k, seeds, misfiled_share)
    return report


def _misfiled(report: FamilyReport, space: np.ndarray, fam: np.ndarray, n_fam: int,
              group: np.ndarray, train: np.ndarray, val: np.ndarray, k: int,
              seeds: tuple[int, ...], share: float) -> None:
    """Plant misfiles per seed; fit the threshold on train, count the flags on val."""
    everything = np.arange(len(fam))
    tp = fp = planted_val = tp_default = fp_default = 0
    thresholds = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        moved = np.zeros(len(fam), bool)
        moved[rng.choice(len(fam), size=round(share * len(fam)), replace=False)] = True
        noisy = fam.copy()
        shift = rng.integers(1, n_fam, size=int(moved.sum()))
        noisy[moved] = (fam[moved] + shift) % n_fam  # always another family
        fit_votes = _votes(space, train, train, group, noisy, k)
        cal = fit_calibration(fit_votes, noisy[train], n_fam)
        fit = predict(fit_votes, noisy[train], n_fam, cal, misfiled_at=0.0)
        threshold = _threshold_for_precision(np.nan_to_num(fit.prob[:, 0]), fit.misfiled,
                                             moved[train], PRECISION_GOAL)
        thresholds.append(threshold)
        val_votes = _votes(space, val, everything, group, noisy, k)
        got = predict(val_votes, noisy[val], n_fam, cal, misfiled_at=threshold)
        tp += int((got.misfiled & moved[val]).sum())
        fp += int((got.misfiled & ~moved[val]).sum())
        shipped = predict(val_votes, noisy[val], n_fam, cal, misfiled_at=MISFILED_AT)
        tp_default += int((shipped.misfiled & moved[val]).sum())
        fp_default += int((shipped.misfiled & ~moved[val]).sum())
        planted_val += int(moved[val].sum())
    report.misfiled_threshold = float(np.median(thresholds))
    report.misfiled_flagged = tp + fp
    report.misfiled_planted = planted_val
    report.misfiled_precision = tp / (tp + fp) if tp + fp else float("nan")
    report.misfiled_recall = tp / planted_val if planted_val else float("nan")
    flagged = tp_default + fp_default
    report.default_precision = tp_default / flagged if flagged else float("nan")
    report.default_recall = tp_default / planted_val if planted_val else float("nan")


def grocery_reports(root: Path, model_cache: Path, cache_file: Path,
                    spec: str = "efficientnet-lite0") -> tuple[list[FamilyReport], str]:
    """Both variants on the grocery-store photos under `root`; FV cached in `cache_file`."""
    from npimage.families.grocery import embed_cached, load_photos

    photos = load_photos(root)
    fv, model_id = embed_cached(photos, spec, model_cache, cache_file)
    return [evaluate_families(fv, photos.family, photos.fine, photos.split, by_fine=b)
            for b in (False, True)], model_id


def format_reports(reports: list[FamilyReport], model_id: str = "") -> str:
    """Markdown table of the evaluation variants (docs/QUALITY.md)."""
    lines = [f"model `{model_id}`" if model_id else "",
             "| variant | fit / measured | top-1 | top-3 | ECE | tau | misfiled threshold "
             "| misfiled precision | misfiled recall | planted / flagged |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(
            f"| {r.variant} | {r.n_fit} / {r.n_eval} | {r.top1:.3f} | {r.top3:.3f} | "
            f"{r.ece:.3f} | {r.calibration.tau:.3g} | {r.misfiled_threshold:.2f} | "
            f"{r.misfiled_precision:.3f} | {r.misfiled_recall:.3f} | "
            f"{r.misfiled_planted} / {r.misfiled_flagged} |")
    lines.append("")
    lines.append(f"misfiled flag at the shipped threshold {MISFILED_AT}: " + "; ".join(
        f"{r.variant}: precision {r.default_precision:.3f}, recall {r.default_recall:.3f}"
        for r in reports))
    worst = sorted(reports[0].per_family.items(), key=lambda kv: kv[1])[:5] if reports else []
    if worst:
        lines.append("")
        lines.append("weakest families (one product per photo, top-1 on val): " + ", ".join(
            f"{name} {acc:.2f}" for name, acc in worst))
    return "\n".join(line for line in lines if line is not None)


@dataclass
class PublishedFamilies:
    """Family predictions of a published run against the catalogue's current families."""

    products: int  # with a family and a prediction
    top1: float
    top3: float
    misfiled: int
    unfiled_suggested: int  # products without a family that got a suggestion

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def published_families(warehouse: Path, client_id: str) -> PublishedFamilies:
    """Leave-one-product-out figures of a client's published predictions: every prediction
    is made without the product's own images, so its current family is a held-out label."""
    from npimage.storage.warehouse import connect_readonly

    con = connect_readonly(warehouse)
    try:
        row = con.execute(load_sql("duckdb", "evaluate_families"),
                          {"client": client_id}).fetchone()
    finally:
        con.close()
    n, top1, top3, mis, unfiled = row if row is not None else (0, 0.0, 0.0, 0, 0)
    return PublishedFamilies(int(n or 0), float(top1 or 0.0), float(top3 or 0.0),
                             int(mis or 0), int(unfiled or 0))
