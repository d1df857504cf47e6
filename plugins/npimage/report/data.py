"""What the report shows, read from the DuckDB warehouse with a few set-wise queries.

Everything per image or per product that the index pages need (ids, best match, thumbnail
path) is loaded once into small slotted rows. The nearest images and matching products,
the bulk of the data, are not: `image_matches_for` and `product_matches_for` fetch them
one page set (a range of ids) at a time, so memory stays bounded at 100 000 images and
there is one query per page set, never one per image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb

from npimage.errors import UnknownClientError
from npimage.sqlfiles import load_sql

#: Where a page lives, relative to the report root; the ids are hashed into the name.
IMAGE_DIR = "i"
PRODUCT_DIR = "p"


def _digest(kind: str, value: str) -> str:
    """20 hex digits naming `value` safely on any file system (80 bits: no collisions)."""
    return hashlib.blake2b(f"{kind}\0{value}".encode(), digest_size=10).hexdigest()


def page_path(folder: str, ident: str) -> str:
    """Path of the page of image or product `ident`, relative to the report root."""
    digest = _digest(folder, ident)
    return f"{folder}/{digest[:2]}/{digest}.html"


@dataclass(slots=True)
class ImageRow:
    """One catalogue image as the report shows it."""

    image_id: str
    product_id: str
    reference: str | None
    uri: str | None
    size_bytes: int | None
    modified_at: datetime | None
    run_id: str | None
    page: str = ""
    product_page: str = ""
    thumb: str = ""  # set by the thumbnail step, relative to the report root
    thumb_error: str | None = None  # why no thumbnail could be made
    best_score: float | None = None
    best_band: str | None = None
    n_matches: int = 0
    rejects: list[tuple[str, str]] = field(default_factory=list)  # (stage, reason)


@dataclass(slots=True)
class ProductRow:
    """One product: its images and its best match."""

    product_id: str
    n_images: int
    references: list[str]
    page: str = ""
    images: list[ImageRow] = field(default_factory=list)
    best_score: float | None = None
    best_band: str | None = None
    n_matches: int = 0


@dataclass(frozen=True, slots=True)
class Reject:
    """An image that could not be read or decoded."""

    image_id: str
    uri: str | None
    stage: str
    reason: str


@dataclass(frozen=True, slots=True)
class ImageMatch:
    """One of the nearest images of an image, with its score components."""

    match_image_id: str
    rank: int
    score: float
    band: str | None
    dah: float | None
    ddh: float | None
    dph: float | None
    dfv: float | None
    same_bytes: bool | None
    score_before: float | None = None  # compare's score, before verification
    verified: bool | None = None
    verify_reason: str | None = None  # why verification moved the pair (or what it found)


@dataclass(frozen=True, slots=True)
class ProductMatch:
    """A product matching another one, with the pair of images that matched best."""

    match_product_id: str
    score: float
    band: str | None
    n_image_pairs: int
    best_image_id: str | None
    best_match_image_id: str | None
    score_before: float | None = None
    verify_reason: str | None = None


@dataclass
class ReportData:
    """Index-level data of one client: images and products in listing order, rejects."""

    client_id: str
    images: list[ImageRow]
    products: list[ProductRow]
    rejects: list[Reject]
    image_by_id: dict[str, ImageRow]
    product_by_id: dict[str, ProductRow]

    @property
    def run_ids(self) -> list[str]:
        """Distinct runs the images were published by (normally one)."""
        return sorted({i.run_id for i in self.images if i.run_id})


def connect(warehouse: Path | str) -> duckdb.DuckDBPyConnection:
    """A read-only connection: the report never writes to, nor locks out, the warehouse.

    `warehouse` is a warehouse.duckdb or a data dir (local or s3://...).
    """
    from npimage.storage.warehouse import connect as connect_warehouse

    where = str(warehouse)
    if "://" not in where and where.endswith(".duckdb") and not Path(where).is_file():
        raise FileNotFoundError(f"warehouse not found: {warehouse}")
    return connect_warehouse(where)


def _query(con: duckdb.DuckDBPyConnection, name: str, **params: object) -> list[tuple]:
    """Rows of the named query in sql/duckdb/, with named parameters ($client, ...)."""
    return con.execute(load_sql("duckdb", name), params).fetchall()


def load_report_data(con: duckdb.DuckDBPyConnection, client_id: str) -> ReportData:
    """Images, products, best matches and rejects of `client_id`, in listing order."""
    images = [ImageRow(*row) for row in _query(con, "report_images", client=client_id)]
    if not images:
        raise UnknownClientError(f"no images of client {client_id!r} in the warehouse",
                                 hint="check --client and --data-dir, or run "
                                      "`npimage run --client ...` first")
    by_id = {img.image_id: img for img in images}
    for img in images:
        img.page = page_path(IMAGE_DIR, img.image_id)
        img.product_page = page_path(PRODUCT_DIR, img.product_id)
    for image_id, score, band, n in _query(con, "report_best_matches", client=client_id):
        if (best := by_id.get(image_id)) is not None:
            best.best_score, best.best_band, best.n_matches = score, band, n
    rejects = [Reject(*row) for row in _query(con, "report_rejects", client=client_id)]
    for rej in rejects:
        if (rejected := by_id.get(rej.image_id)) is not None:
            rejected.rejects.append((rej.stage, rej.reason))
    products = _load_products(con, client_id, images)
    return ReportData(
        client_id=client_id,
        images=images,
        products=products,
        rejects=rejects,
        image_by_id=by_id,
        product_by_id={p.product_id: p for p in products},
    )


def _load_products(
    con: duckdb.DuckDBPyConnection, client_id: str, images: Sequence[ImageRow]
) -> list[ProductRow]:
    """Products in listing order, each with its images and its best match."""
    products = [
        ProductRow(pid, n, list(refs or []), page=page_path(PRODUCT_DIR, pid))
        for pid, n, refs in _query(con, "report_products", client=client_id)
    ]
    by_id = {p.product_id: p for p in products}
    for img in images:
        by_id[img.product_id].images.append(img)
    for pid, score, band, n in _query(con, "report_best_products", client=client_id):
        if (prod := by_id.get(pid)) is not None:
            prod.best_score, prod.best_band, prod.n_matches = score, band, n
    return products


def chunks(rows: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of `rows` of at most `size` items: the page sets."""
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def image_matches_for(
    con: duckdb.DuckDBPyConnection, client_id: str, first: str, last: str
) -> dict[str, list[ImageMatch]]:
    """Nearest images of every image whose id is in [first, last], best rank first."""
    out: dict[str, list[ImageMatch]] = {}
    rows = _query(con, "report_image_matches", client=client_id, first=first, last=last)
    for image_id, *rest in rows:
        out.setdefault(image_id, []).append(ImageMatch(*rest))
    return out


def product_matches_for(
    con: duckdb.DuckDBPyConnection, client_id: str, first: str, last: str
) -> dict[str, list[ProductMatch]]:
    """Matching products of every product whose id is in [first, last], best first."""
    out: dict[str, list[ProductMatch]] = {}
    rows = _query(con, "report_product_matches", client=client_id, first=first, last=last)
    for product_id, *rest in rows:
        out.setdefault(product_id, []).append(ProductMatch(*rest))
    return out
