"""Measure a published run against ground truth: pair metrics per band, retrieval metrics.

Ground truth comes as pairs (`image_id,match_image_id,label`, label 1/0, true/false or
a band name for positives) or as groups (`image_id,group_id`: images of one group are
duplicates of each other, any other pair is not), read by npimage.quality.truth (an
unknown label is an error, as in fit-weights). Evaluation is kept apart from search:
it only reads the warehouse of a finished run (tables image_matches, product_matches,
images), like imagededup's evaluator reads a finished retrieval.

Metrics:
- per band, cumulative ("this band or better") and overall (every stored pair):
  precision, recall and F1 of unordered image pairs, then of product pairs (a product pair
  is positive when any of its image pairs is);
- retrieval, per image that has at least one true duplicate: recall@1 (the first match is
  a true duplicate), recall@10 (share of its true duplicates among its first 10 matches)
  and mAP (mean average precision of the ranked matches).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from npimage.bands import BANDS, LABELS
from npimage.errors import UnknownClientError
from npimage.quality.truth import expected_band, pair_label, read_truth
from npimage.storage.warehouse import connect_readonly

_BAND_RANK = {name: i for i, name in enumerate(LABELS)}

Pair = tuple[str, str]


def _pair(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


@dataclass
class Truth:
    """Positive pairs, and either explicit negatives (pair file) or a closed universe (groups)."""

    positives: set[Pair]
    negatives: set[Pair] | None = None  # None: every other pair inside `images` is negative
    images: set[str] = field(default_factory=set)

    def is_judged(self, pair: Pair) -> bool:
        """Does the truth say anything about this pair (so that it counts for precision)?"""
        if self.negatives is None:
            return pair[0] in self.images and pair[1] in self.images
        return pair in self.positives or pair in self.negatives


def load_truth(path: Path) -> Truth:
    """The Truth of a pairs or groups truth CSV (npimage.quality.truth reads it)."""
    truth = read_truth(path)
    rows = truth.rows
    if truth.kind == "groups":
        groups: dict[str, list[str]] = defaultdict(list)
        for r in rows:
            groups[r["group_id"]].append(r["image_id"])
        positives = {_pair(a, b) for ids in groups.values() for i, a in enumerate(ids)
                     for b in ids[i + 1:] if a != b}
        return Truth(positives, None, {r["image_id"] for r in rows})
    pos: set[Pair] = set()
    neg: set[Pair] = set()
    for k, r in enumerate(rows):
        pair = _pair(r["image_id"], r["match_image_id"])
        (neg if pair_label(r["label"], truth.where(k)) is None else pos).add(pair)
    return Truth(pos, neg - pos, {i for p in pos | neg for i in p})


@dataclass(frozen=True)
class PRF:
    """Precision, recall and F1 of one set of predicted pairs."""

    name: str
    predicted: int
    true_positives: int
    positives: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.positives if self.positives else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def _prf_by_band(pred: dict[Pair, str], truth: Truth) -> list[PRF]:
    judged = {p: b for p, b in pred.items() if truth.is_judged(p)}
    out = []
    for name, _ in BANDS:
        chosen = {p for p, b in judged.items() if _BAND_RANK[b] <= _BAND_RANK[name]}
        out.append(PRF(f"{name} or better", len(chosen), len(chosen & truth.positives),
                       len(truth.positives)))
    out.append(PRF("all stored", len(judged), len(set(judged) & truth.positives),
                   len(truth.positives)))
    return out


def _retrieval(ranked: dict[str, list[str]], truth: Truth) -> dict[str, float]:
    partners: dict[str, set[str]] = defaultdict(set)
    for a, b in truth.positives:
        partners[a].add(b)
        partners[b].add(a)
    hits1, recall10, aps = [], [], []
    for image, relevant in partners.items():
        ranking = ranked.get(image, [])
        hits1.append(bool(ranking) and ranking[0] in relevant)
        recall10.append(len(set(ranking[:10]) & relevant) / len(relevant))
        found, precisions = 0, []
        for i, match in enumerate(ranking, start=1):
            if match in relevant:
                found += 1
                precisions.append(found / i)
        aps.append(sum(precisions) / len(relevant))
    n = len(partners)
    return {"queries": n, "recall@1": sum(hits1) / n if n else 0.0,
            "recall@10": sum(recall10) / n if n else 0.0, "mAP": sum(aps) / n if n else 0.0}


@dataclass(frozen=True)
class Evaluation:
    images: list[PRF]
    products: list[PRF]
    retrieval: dict[str, float]

    def as_dict(self) -> dict:
        def rows(items: list[PRF]) -> list[dict]:
            return [{"name": m.name, "predicted": m.predicted, "true_positives": m.true_positives,
                     "positives": m.positives, "precision": m.precision, "recall": m.recall,
                     "f1": m.f1} for m in items]
        return {"image_pairs": rows(self.images), "product_pairs": rows(self.products),
                "retrieval": self.retrieval}


def evaluate(warehouse: Path, client_id: str, truth: Truth) -> Evaluation:
    """Metrics of a client's published run against `truth`."""
    con = connect_readonly(warehouse)
    try:
        params = {"c": client_id}
        matches = con.execute("SELECT image_id, match_image_id, band FROM image_matches "
                              "WHERE client_id = $c ORDER BY image_id, rank", params).fetchall()
        products = dict(con.execute("SELECT image_id, product_id FROM images "
                                    "WHERE client_id = $c", params).fetchall())
        pmatches = con.execute("SELECT product_id, match_product_id, band FROM product_matches "
                               "WHERE client_id = $c", params).fetchall()
    finally:
        con.close()
    if not products:
        raise UnknownClientError(f"no published run for client {client_id!r} in {warehouse}",
                                 hint="check --client and --data-dir")
    ranked: dict[str, list[str]] = defaultdict(list)
    pred: dict[Pair, str] = {}
    for a, b, band in matches:
        ranked[a].append(b)
        pred[_pair(a, b)] = band
    product_truth = _product_truth(truth, products)
    pred_products = {_pair(a, b): band for a, b, band in pmatches}
    return Evaluation(_prf_by_band(pred, truth), _prf_by_band(pred_products, product_truth),
                      _retrieval(ranked, truth))


def _product_truth(truth: Truth, products: dict[str, str]) -> Truth:
    """Image truth lifted to products: a product pair is positive if any image pair is."""
    def lift(pairs: set[Pair]) -> set[Pair]:
        out = set()
        for a, b in pairs:
            pa, pb = products.get(a), products.get(b)
            if pa is not None and pb is not None and pa != pb:
                out.add(_pair(pa, pb))
        return out
    positives = lift(truth.positives)
    if truth.negatives is None:
        universe = {products[i] for i in truth.images if i in products}
        return Truth(positives, None, universe)
    return Truth(positives, lift(truth.negatives) - positives, set())


def format_evaluation(ev: Evaluation) -> str:
    """Plain-text tables of an Evaluation."""
    lines = []
    for title, items in (("image pairs", ev.images), ("product pairs", ev.products)):
        lines.append(f"{title}:")
        lines.append(f"  {'band':<26}{'predicted':>10}{'correct':>9}{'truth':>7}"
                     f"{'precision':>11}{'recall':>8}{'F1':>7}")
        for m in items:
            lines.append(f"  {m.name:<26}{m.predicted:>10}{m.true_positives:>9}{m.positives:>7}"
                         f"{m.precision:>11.3f}{m.recall:>8.3f}{m.f1:>7.3f}")
    r = ev.retrieval
    lines.append(f"retrieval over {r['queries']} images with a true duplicate: "
                 f"recall@1 {r['recall@1']:.3f}  recall@10 {r['recall@10']:.3f}  "
                 f"mAP {r['mAP']:.3f}")
    return "\n".join(lines)


@dataclass(frozen=True)
class PlantedResult:
    """Per kind of planted duplicate: how many there are, found at all, found in band."""

    kind: str
    total: int
    found: int
    in_band: int


def planted_found(warehouse: Path, client_id: str, truth: Path) -> list[PlantedResult]:
    """Compare image_matches with a demo truth.csv (image_id,group_id,kind,expected_band).

    The pair checked for each planted image is (group_id, image_id): the original photo
    and its planted copy; found means present in image_matches in both directions.
    """
    rows_of = read_truth(truth)
    rows = [r for k, r in enumerate(rows_of.rows)
            if expected_band(r.get("expected_band"), rows_of.where(k))]
    con = connect_readonly(warehouse)
    try:
        found = {(a, b): band for a, b, band in con.execute(
            "SELECT image_id, match_image_id, band FROM image_matches WHERE client_id = $c",
            {"c": client_id}).fetchall()}
    finally:
        con.close()
    stats: dict[str, list[int]] = {}
    for r in rows:
        s = stats.setdefault(r["kind"], [0, 0, 0])
        s[0] += 1
        band = found.get((r["group_id"], r["image_id"]))
        if band is not None and (r["image_id"], r["group_id"]) in found:
            s[1] += 1
            if _BAND_RANK[band] <= _BAND_RANK[r["expected_band"]]:
                s[2] += 1
    return [PlantedResult(k, *v) for k, v in sorted(stats.items())]


# -- per kind, before and after verification (demo truth with kind, edit and family_id) ---------

@dataclass(frozen=True)
class KindResult:
    """Pairs of one kind, and how many reach `same` / >= 0.95 before and after verification
    (before = compare's score, `score_before`). `expected` is the band the kind must reach
    ("" for pairs of different products, which must not reach 0.95)."""

    kind: str
    expected: str
    pairs: int
    found: int
    same_before: int
    same_after: int
    ret_before: int
    ret_after: int


def edit_class(kind: str, edit: str) -> str:
    """The class a planted picture is reported in: its kind, and for retouches the edit with
    its strength range (the verification's thresholds were fitted on the milder range)."""
    if kind == "recompress" and edit.startswith("q") and edit[1:].isdigit():
        return "recompress q>=70" if int(edit[1:]) >= 70 else "recompress q<70"
    if kind != "retouch":
        return kind
    name, _, value = edit.partition(" ")
    try:
        x = abs(float(value.split()[0]))
    except (ValueError, IndexError):
        return f"retouch {name}"
    if name == "crop":
        return "retouch crop <=5 %" if x <= 5 else "retouch crop 5-10 %"
    if name == "rotate":
        return "retouch rotate <=2" if x <= 2 else "retouch rotate 2-5"
    return f"retouch {name}"


def by_kind(warehouse: Path, client_id: str, truth_path: Path) -> list[KindResult]:
    """Per kind of labelled pair, before and after verification: planted pictures against
    their original (per edit class), variant pairs (two products of one family: another
    strength, barcode, name or colour) and other pairs of different pictures."""
    with truth_path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "kind" not in rows[0]:
        return []
    con = connect_readonly(warehouse)
    try:
        scores = {(a, b): (s, sb if sb is not None else s) for a, b, s, sb in con.execute(
            "SELECT image_id, match_image_id, score, score_before FROM image_matches "
            "WHERE client_id = $c", {"c": client_id}).fetchall()}
    finally:
        con.close()
    same, ret = BANDS[0][1], BANDS[1][1]
    acc: dict[tuple[str, str], list[int]] = {}

    def add(cls: str, expected: str, pair: tuple[float, float] | None) -> None:
        s = acc.setdefault((cls, expected), [0] * 6)
        s[0] += 1
        if pair is not None:
            after, before = pair
            s[1] += 1
            s[2] += before >= same
            s[3] += after >= same
            s[4] += before >= ret
            s[5] += after >= ret

    for r in rows:
        if r.get("expected_band"):
            add(edit_class(r["kind"], r.get("edit", "")), r["expected_band"],
                scores.get((r["group_id"], r["image_id"])))
    group = {r["image_id"]: r["group_id"] for r in rows}
    family = {r["image_id"]: r.get("family_id", "") for r in rows}
    for (a, b), pair in scores.items():
        if a < b and a in group and b in group and group[a] != group[b]:
            fam = family[a] and family[a] == family[b]
            add("variant (one template)" if fam else "different pictures", "", pair)
    return [KindResult(k, e, *v) for (k, e), v in sorted(acc.items(), key=lambda kv: (
        kv[0][1] == "", kv[0][0]))]


def format_by_kind(results: list[KindResult]) -> str:
    """Plain-text table of by_kind: counts before -> after verification."""
    lines = ["per kind, before -> after verification (labelled pairs; different pictures: "
             "stored pairs):",
             f"  {'kind':<26}{'must reach':>11}{'pairs':>7}{'found':>7}"
             f"{'in same':>14}{'>= 0.95':>14}"]
    for k in results:
        lines.append(f"  {k.kind:<26}{k.expected or '< 0.95':>11}{k.pairs:>7}{k.found:>7}"
                     f"{f'{k.same_before} -> {k.same_after}':>14}"
                     f"{f'{k.ret_before} -> {k.ret_after}':>14}")
    return "\n".join(lines)
