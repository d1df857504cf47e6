"""What the review application shows, read from the warehouse and the decisions log.

Groups are the connected components of the image pairs in bands `same` and `retouched`
(copies and retouches of one picture), computed with a vectorised union-find over the
pair arrays (NumPy: min-label propagation with pointer jumping, O(E log V)); pairs that
a reviewer rejected ("not the same", column `rejected`) join no group. The product merge
candidates are the product pairs, each once. A `Queue` orders every pair a reviewer goes
through: the groups' pairs (largest group first, best score first), then the products'.

The warehouse is opened (views over the published files) for each load and closed at
once; a load is cached until the client's pointer names another published run.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq

from npimage.bands import BANDS
from npimage.review import store
from npimage.sqlfiles import load_sql

#: Bands whose pairs are the same picture (copies, retouches): groups are made of them.
GROUP_BANDS: tuple[str, ...] = tuple(b.name for b in BANDS[:2])  # same, retouched


def connect(warehouse: Path) -> duckdb.DuckDBPyConnection:
    """A connection on the warehouse (npimage.storage.warehouse.connect): views over the
    published runs' files as the pointers name them now; it never blocks a publish."""
    from npimage.storage.warehouse import connect as connect_warehouse

    if not Path(warehouse).exists():
        raise FileNotFoundError(f"no warehouse at {warehouse}: run `npimage run` first")
    return connect_warehouse(str(warehouse))


def components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Component label (smallest member index) of each of n nodes, given edges a[i]-b[i].

    Vectorised union-find: every round, each edge pulls both ends' labels down to their
    minimum (np.minimum.at), then labels jump to their label's label until stable.
    """
    labels = np.arange(n, dtype=np.int64)
    if len(a) == 0:
        return labels
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    while True:
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        while True:  # pointer jumping: compress chains of labels
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(before, labels):
            return labels


@dataclass(frozen=True)
class Image:
    """One image as the reviewer sees it."""

    image_id: str
    product_id: str | None
    product_name: str | None
    reference: str | None
    uri: str | None
    width: int | None
    height: int | None
    size_bytes: int | None


@dataclass
class Pair:
    """A pair to review: two images, or two products (with their best image pair)."""

    kind: str  # image | product
    item_id: str
    match_id: str
    score: float
    band: str
    rejected: bool
    image_a: str  # the images shown: the pair itself, or the products' best image pair
    image_b: str
    group: int | None = None  # index of the image group, for image pairs
    n_image_pairs: int | None = None
    components: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. verify_* columns when present

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.item_id}\t{self.match_id}"


@dataclass
class Group:
    """A connected component of same/retouched image pairs."""

    index: int
    images: list[str]
    pairs: list[int]  # positions in Queue.pairs
    best: float


@dataclass
class Queue:
    """Everything the application shows for one client's published run."""

    client_id: str
    run_id: str | None
    published_at: Any
    images: dict[str, Image]
    groups: list[Group]
    pairs: list[Pair]
    n_products: int  # product pairs at the end of `pairs`
    names: dict[str, str] = field(default_factory=dict)  # product_id -> name, when known

    def position(self, kind: str, item_id: str, match_id: str) -> int | None:
        a, b = sorted((item_id, match_id))
        return self._index().get(f"{kind}:{a}\t{b}")

    def _index(self) -> dict[str, int]:
        if not hasattr(self, "_idx"):
            self._idx = {p.key: i for i, p in enumerate(self.pairs)}
        return self._idx


def _pointer(data_dir: Path, client_id: str) -> dict[str, Any] | None:
    """The client's published-run pointer (storage.layout), or None."""
    from npimage.storage.layout import Layout, read_json

    try:
        return read_json(Layout.of(str(data_dir)).pointer(client_id))
    except (OSError, ValueError):
        return None


def product_names(data_dir: Path, client_id: str) -> dict[str, str]:
    """product_id -> name from the client's published run (product_names.parquet), if any."""
    from npimage.storage.layout import Layout

    ref = _pointer(data_dir, client_id)
    if not ref or "run_id" not in ref:
        return {}
    path = Path(str(Layout.of(str(data_dir)).run_dir(client_id, ref["run_id"]))) / \
        "product_names.parquet"
    if not path.exists():
        return {}
    t = pq.read_table(path, columns=["product_id", "name"])
    return dict(zip(t["product_id"].to_pylist(), t["name"].to_pylist(), strict=True))


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index",
        [table]).fetchall()]


def _image_pairs(con: duckdb.DuckDBPyConnection, client_id: str) -> list[Pair]:
    cols = _columns(con, "image_matches")
    extra = [c for c in cols if c.startswith("verif")]  # helper verify's columns, if present
    rejected = "coalesce(rejected, false)" if "rejected" in cols else "false"
    extra_sql = "".join(f", {duckdb_quote(c)}" for c in extra)
    rows = con.execute(
        f"SELECT image_id, match_image_id, score, band, dah, ddh, dph, dfv, same_bytes, "
        f"{rejected}{extra_sql} FROM image_matches WHERE client_id = ? "
        f"AND image_id < match_image_id AND list_contains(?, band) "
        f"ORDER BY score DESC, image_id, match_image_id",
        [client_id, list(GROUP_BANDS)]).fetchall()
    return [Pair("image", r[0], r[1], float(r[2]), r[3], bool(r[9]), r[0], r[1],
                 components=dict(zip(("dah", "ddh", "dph", "dfv", "same_bytes"), r[4:9],
                                     strict=True)),
                 extra=dict(zip(extra, r[10:], strict=True))) for r in rows]


def duckdb_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _product_pairs(con: duckdb.DuckDBPyConnection, client_id: str) -> list[Pair]:
    cols = _columns(con, "product_matches")
    rejected = "coalesce(rejected, false)" if "rejected" in cols else "false"
    rows = con.execute(
        f"SELECT product_id, match_product_id, score, band, n_image_pairs, best_image_id, "
        f"best_match_image_id, {rejected} FROM product_matches WHERE client_id = ? "
        f"AND product_id < match_product_id ORDER BY score DESC, product_id, match_product_id",
        [client_id]).fetchall()
    return [Pair("product", r[0], r[1], float(r[2]), r[3], bool(r[7]), r[5], r[6],
                 n_image_pairs=r[4]) for r in rows]


def _images(con: duckdb.DuckDBPyConnection, client_id: str,
            names: dict[str, str]) -> dict[str, Image]:
    rows = con.execute(load_sql("duckdb", "review_images"), [client_id]).fetchall()
    return {r[0]: Image(r[0], r[1], names.get(r[1]) if r[1] else None, r[2], r[3], r[4], r[5],
                        r[6]) for r in rows}


def _group(pairs: list[Pair]) -> list[Group]:
    """Groups of the image pairs not rejected; sets Pair.group; largest, best first."""
    live = [i for i, p in enumerate(pairs) if p.kind == "image" and not p.rejected]
    ids = sorted({x for i in live for x in (pairs[i].item_id, pairs[i].match_id)})
    if not ids:
        return []
    pos = {x: k for k, x in enumerate(ids)}
    a = np.fromiter((pos[pairs[i].item_id] for i in live), np.int64, len(live))
    b = np.fromiter((pos[pairs[i].match_id] for i in live), np.int64, len(live))
    labels = components(a, b, len(ids))
    members: dict[int, list[str]] = {}
    for k, lab in enumerate(labels.tolist()):
        members.setdefault(lab, []).append(ids[k])
    edges: dict[int, list[int]] = {}
    for i, lab in zip(live, labels[a].tolist(), strict=True):
        edges.setdefault(lab, []).append(i)
    order = sorted(members, key=lambda lab: (-len(members[lab]),
                                             -max(pairs[i].score for i in edges[lab]),
                                             members[lab][0]))
    return [Group(n, members[lab], edges[lab], max(pairs[i].score for i in edges[lab]))
            for n, lab in enumerate(order)]


def load_queue(warehouse: Path, data_dir: Path, client_id: str) -> Queue:
    """Groups, pairs and images of the client's published run (see the module's doc)."""
    con = connect(warehouse)
    try:
        run = con.execute("SELECT run_id, published_at FROM runs WHERE client_id = ? "
                          "ORDER BY published_at DESC LIMIT 1", [client_id]).fetchone()
        if run is None:
            raise LookupError(f"client {client_id!r} has no published run in {warehouse}")
        names = product_names(data_dir, client_id)
        images = _images(con, client_id, names)
        image_pairs = _image_pairs(con, client_id)
        product_pairs = _product_pairs(con, client_id)
    finally:
        con.close()
    groups = _group(image_pairs)
    ordered: list[Pair] = []
    new_groups = []
    for g in groups:  # the queue walks group by group, best pair first
        start = len(ordered)
        for i in sorted(g.pairs, key=lambda i: -image_pairs[i].score):
            image_pairs[i].group = g.index
            ordered.append(image_pairs[i])
        new_groups.append(Group(g.index, g.images, list(range(start, len(ordered))), g.best))
    ordered += [p for p in image_pairs if p.rejected]  # rejected image pairs: flagged, last
    return Queue(client_id, run[0], run[1], images, new_groups, ordered + product_pairs,
                 len(product_pairs), names)


class QueueCache:
    """load_queue, cached per client until the client's pointer changes (a new publish)."""

    def __init__(self, warehouse: Path, data_dir: Path) -> None:
        self.warehouse = warehouse
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str, Queue]] = {}

    def get(self, client_id: str) -> Queue:
        stamp = json.dumps(_pointer(self.data_dir, client_id), sort_keys=True, default=str)
        with self._lock:
            hit = self._cache.get(client_id)
            if hit and hit[0] == stamp:
                return hit[1]
        queue = load_queue(self.warehouse, self.data_dir, client_id)
        with self._lock:
            self._cache[client_id] = (stamp, queue)
        return queue


def decisions_in_force(data_dir: Path, client_id: str) -> dict[str, dict[str, Any]]:
    """Pair key (as Pair.key) -> the decision in force for it."""
    return {f"{r['kind']}:{r['item_id']}\t{r['match_id']}": r
            for r in store.latest(data_dir, client_id).to_pylist()}
