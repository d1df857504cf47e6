"""The labelled set of a fit: a published run's signatures joined with a truth file.

Truth files are read by npimage.quality.truth (the one reader, shared with evaluate).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from npimage.bands import BANDS
from npimage.errors import UnknownClientError
from npimage.quality.truth import TruthRows, expected_band, is_yes, pair_label, read_truth

BAND_NAMES = tuple(b.name for b in BANDS)


@dataclass
class Labelled:
    """Signatures of the labelled images and what the truth says about them."""

    ids: np.ndarray  # (n,) object
    hashes: np.ndarray  # (n, 3) uint64
    fv: np.ndarray | None  # (n, d) float32 unit rows
    sha: np.ndarray  # (n,) int64
    size: np.ndarray  # (n,) int64
    group: np.ndarray | None  # (n,) int64; None: negatives are `neg` only
    product: np.ndarray  # (n,) int64, -1 unknown
    query: np.ndarray  # (n,) bool
    pos: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # i, j, band index, kind
    neg: tuple[np.ndarray, np.ndarray] | None = None  # explicit negatives (pairs truth)
    dropped: int = 0  # truth images without a signature (rejected by the run)

    def __len__(self) -> int:
        return len(self.ids)

    def restrict(self, keep: np.ndarray) -> Labelled:
        """The images `keep` (bool mask) only, with the labels among them."""
        new = np.full(len(self), -1, np.int64)
        new[keep] = np.arange(int(keep.sum()))
        i, j, b, k = self.pos
        ok = keep[i] & keep[j]
        neg = None
        if self.neg is not None:
            ni, nj = self.neg
            nok = keep[ni] & keep[nj]
            neg = (new[ni[nok]], new[nj[nok]])
        return replace(
            self, ids=self.ids[keep], hashes=self.hashes[keep],
            fv=None if self.fv is None else self.fv[keep], sha=self.sha[keep],
            size=self.size[keep], group=None if self.group is None else self.group[keep],
            product=self.product[keep], query=self.query[keep],
            pos=(new[i[ok]], new[j[ok]], b[ok], k[ok]), neg=neg)


def run_files(data_dir: Path, client_id: str) -> tuple[str, Path]:
    """(run_id, run folder) of the client's last published run."""
    from npimage.storage.layout import Layout

    layout = Layout.of(data_dir)
    ref = layout.read_pointer(client_id)
    if ref is None:
        raise UnknownClientError(f"no published run for client {client_id!r} in {data_dir}",
                                 hint="run `npimage run --client ...` first, or check "
                                      "--client and --data-dir")
    return ref["run_id"], layout.run_dir(client_id, ref["run_id"])


def read_run(data_dir: Path, client_id: str) -> tuple[pa.Table, dict[str, str], str]:
    """(signatures, {image_id: product_id}, run_id) of the client's published run."""
    run_id, run_dir = run_files(data_dir, client_id)
    from npimage.storage.parquet_io import list_parts, read_table

    shards = list_parts(run_dir / "signatures", "shard-*.parquet")
    if not shards:
        raise ValueError(f"run {run_id} of {client_id!r} has no signatures in {run_dir}")
    sigs = pa.concat_tables([read_table(p) for p in shards])
    cat = read_table(run_dir / "catalog.parquet", columns=["image_id", "product_id"])
    products = dict(zip(cat["image_id"].to_pylist(), cat["product_id"].to_pylist(),
                        strict=True))
    return sigs, products, run_id


def _codes(values: list[str | None]) -> np.ndarray:
    """Integer codes of strings (-1 for None or empty)."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(v, len(index)) if v else -1 for v in values], np.int64)


def labelled_set(sigs: pa.Table, products: dict[str, str], truth: Path) -> Labelled:
    """Join a run's signatures with a truth file (see the module docstring)."""
    from npimage.matching.compare import arrays_from_table, unit_rows

    truth_rows = read_truth(truth)
    fmt, rows = truth_rows.kind, truth_rows.rows
    use_fv = sigs.num_rows > 0 and sigs["fv"].null_count == 0
    arrays = arrays_from_table(sigs, use_fv)
    where = {image_id: i for i, image_id in enumerate(arrays.ids)}
    ids = ([r["image_id"] for r in rows] if fmt == "groups" else
           [x for r in rows for x in (r["image_id"], r["match_image_id"])])
    known = [i for i in dict.fromkeys(ids) if i in where]
    local = {image_id: k for k, image_id in enumerate(known)}
    a = arrays.take(np.array([where[i] for i in known], np.int64))
    if fmt == "groups":
        group, product, query, pos = _group_labels(truth_rows, known, local, products)
        neg = None
    else:
        group, product = None, np.full(len(known), -1, np.int64)
        query = np.zeros(len(known), bool)
        pos, neg = _pair_labels(truth_rows, local)
    if not pos:
        raise ValueError(f"{truth}: no positive pair with a band among the run's images")
    pi, pj, pb, pk = zip(*pos, strict=True)
    fv = unit_rows(a.fv) if use_fv and a.fv is not None else None
    return Labelled(ids=a.ids, hashes=a.hashes, fv=fv,
                    sha=a.sha, size=a.size, group=group, product=product, query=query,
                    pos=(np.array(pi), np.array(pj), np.array(pb, np.int8),
                         np.array(pk, dtype=object)),
                    neg=neg, dropped=len(set(ids)) - len(known))


Label = tuple[int, int, int, str]  # (source, image, band index, kind)


def _group_labels(truth: TruthRows, known: list[str], local: dict[str, int],
                  products: dict[str, str]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Label]]:
    """(group, product, query, positives) of a groups truth, for the images `known`."""
    rows = truth.rows
    by_id = {r["image_id"]: r for r in rows}
    group = _codes([by_id[i]["group_id"] for i in known])
    product = _codes([by_id[i].get("product") or products.get(i) for i in known])
    pos = []
    for k, r in enumerate(rows):
        band = expected_band(r.get("expected_band"), truth.where(k))
        source = r.get("source") or r["group_id"]
        if band and r["image_id"] in local and source in local:
            pos.append((local[source], local[r["image_id"]], BAND_NAMES.index(band),
                        r.get("kind") or ""))
    if rows and "query" in rows[0]:
        query = np.array([is_yes(by_id[i].get("query")) for i in known], bool)
    else:
        query = _default_queries(group, product)
    return group, product, query, pos


def _pair_labels(truth: TruthRows, local: dict[str, int]
                 ) -> tuple[list[Label], tuple[np.ndarray, np.ndarray]]:
    """(positives, negatives) of a pairs truth, among the images in `local`."""
    pos, negs = [], []
    for k, r in enumerate(truth.rows):
        band = pair_label(r["label"], truth.where(k))  # every row checked, kept or not
        if r["image_id"] in local and r["match_image_id"] in local:
            i, j = local[r["image_id"]], local[r["match_image_id"]]
            if band is None:
                negs.append((i, j))
            else:
                pos.append((i, j, BAND_NAMES.index(band), r["label"].strip().lower()))
    nij = np.array(negs, np.int64).reshape(-1, 2)
    return pos, (nij[:, 0], nij[:, 1])


def _default_queries(group: np.ndarray, product: np.ndarray) -> np.ndarray:
    """Images whose product is shown by at least two groups (photos)."""
    ok = product >= 0
    pairs = np.unique(np.stack([product[ok], group[ok]], axis=1), axis=0)
    prods, counts = np.unique(pairs[:, 0], return_counts=True)
    multi = np.zeros(int(product.max(initial=-1)) + 2, bool)
    multi[prods[counts >= 2]] = True
    return ok & multi[product]
