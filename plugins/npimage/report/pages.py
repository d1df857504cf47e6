"""Write the report's HTML pages from Jinja2 templates (files in `templates/`).

Layout of a report, relative to its root (`index.html` is page 1 of the image index):
    index.html, list/images-<band>-NNNN.html   image index, all or one band, 200 per page
    list/products-<band>-NNNN.html             product index
    list/rejects-NNNN.html                     images that could not be read
    i/<xx>/<hash>.html                         one small page per image
    p/<xx>/<hash>.html                         one small page per product
    search/manifest.js, search/<hash>.js       search index shards (see search.py)
    assets/                                    style sheet, search script, placeholders
    thumbs/<xx>/<hash>.jpg                     thumbnails (see thumbs.py)
Page file names are hashes of ids, so any id (quotes, <, &, spaces, non-ASCII) is safe;
every id shown is escaped by Jinja2's autoescaping. Every page sets <base href> to the
report root, so links inside it are root-relative whatever the page's depth.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

import npimage
from npimage.bands import BANDS
from npimage.progress import StepProgress
from npimage.report import search
from npimage.report.data import (
    ImageMatch,
    ImageRow,
    ProductRow,
    ReportData,
    chunks,
    image_matches_for,
    product_matches_for,
)
from npimage.report.families import suggestions_for

HERE = Path(__file__).parent
PER_PAGE = 200
#: Images (or products) per DuckDB query when writing their pages.
PAGE_SET = 2000
MISSING = "assets/missing.svg"

#: The band in words, as a reviewer reads it.
BAND_WORDS = {
    "same": "Same image",
    "retouched": "Same image, retouched",
    "very_similar": "Very similar product",
    "similar": "Fairly similar",
    "weak": "Weak (below the bands)",
    None: "No match",
}
#: Band filters of the index pages: (slug, label); "none" is "no match at all".
FILTERS = (
    ("all", "All"),
    ("same", "Same image"),
    ("retouched", "Retouched"),
    ("very_similar", "Very similar"),
    ("similar", "Fairly similar"),
    ("weak", "Weak"),
    ("none", "No match"),
)
COMPONENTS = (
    ("dah", "Average hash"),
    ("ddh", "Difference hash"),
    ("dph", "Perceptual hash"),
    ("dfv", "Visual features"),
)



def list_href(kind: str, number: int, band: str = "all") -> str:
    """Root-relative path of page `number` of an index (`kind` images/products/rejects)."""
    if kind == "images" and band == "all" and number == 1:
        return "index.html"
    if kind in ("rejects", "misfiled"):
        return f"list/{kind}-{number:04d}.html"
    return f"list/{kind}-{band}-{number:04d}.html"


def _root_of(rel: str) -> str:
    """The `../` prefix leading from page `rel` back to the report root."""
    return "../" * rel.count("/")


def _filesize(value: int | None) -> str:
    """A file size as a person reads it, with the exact byte count beside it."""
    if value is None:
        return "—"
    if value < 1024:
        return f"{value} bytes"
    kib = value / 1024
    shown = f"{kib:.1f} KB" if kib < 1024 else f"{kib / 1024:.1f} MB"
    return f"{shown} ({value:,} bytes)".replace(",", "\u202f")


def _when(value: datetime | None) -> str:
    """A timestamp in UTC to the minute: enough to tell which file is newer."""
    if value is None:
        return "—"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _components(m: ImageMatch) -> list[tuple[str, float | None]]:
    """(label, value) of each score component of a match, None when not computed."""
    return [(label, getattr(m, name)) for name, label in COMPONENTS]


def _level(value: float) -> str:
    """Colour class of a component bar: at the 'same image' level, in a band, below.

    Judged on the value as shown (3 decimals), so a bar never disagrees with its number.
    """
    shown = round(value, 3)
    if shown >= BANDS[1].lower:
        return "lv-hi"
    return "lv-mid" if shown >= BANDS[-1].lower else "lv-lo"


def make_env() -> Environment:
    """The Jinja2 environment: autoescaping on for every template, strict about typos."""
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["filesize"] = _filesize
    env.filters["when"] = _when
    env.globals.update(
        band_words=BAND_WORDS,
        components=_components,
        level=_level,
        missing_thumb=MISSING,
        lowest_band=f"{BANDS[-1].lower:.2f} ({BAND_WORDS[BANDS[-1].name].lower()})",
        products_home=list_href("products", 1),
        rejects_home=list_href("rejects", 1),
        misfiled_home=list_href("misfiled", 1),
        version=npimage.__version__,
    )
    return env


@dataclass
class Pager:
    """One page of a paginated list, with what the pager and band chips need."""

    number: int
    count: int
    total: int
    first_item: int
    last_item: int
    prev: str | None
    next: str | None
    window: list[tuple[int, str | None]]
    chips: list[dict[str, Any]] = field(default_factory=list)
    band_label: str = ""
    order: str = ""


def _window(number: int, count: int, href: Callable[[int], str]) -> list[tuple[int, str | None]]:
    """Page links around the current page, with first and last; None marks a gap."""
    wanted = sorted({1, count, *range(max(1, number - 2), min(count, number + 2) + 1)})
    out: list[tuple[int, str | None]] = []
    for prev, num in zip([0, *wanted], wanted, strict=False):
        if num - prev > 1:
            out.append((0, None))
        out.append((num, href(num)))
    return out


def _band_of(row: ImageRow | ProductRow) -> str:
    """Band filter a row belongs to: the band of its best match, or "none"."""
    return row.best_band or "none"


@dataclass
class Writer:
    """Renders the pages of one report into `root`, rewriting only pages that changed.

    A page's bytes are compared with the file already there (same size, then same bytes)
    and the file is left alone when equal: on a slow disk a re-render then costs reads,
    not writes. Image and product pages hold nothing that changes from run to run (no
    date, no run id, no totals), so they stay byte-identical unless their data changed.
    `remove_stale` deletes, afterwards, the files of the previous render not written now.
    """

    root: Path
    data: ReportData
    per_page: int = PER_PAGE
    progress: StepProgress | None = None
    env: Environment = field(default_factory=make_env)
    written: set[str] = field(default_factory=set)
    changed: int = 0
    _dirs: set[Path] = field(default_factory=set)
    misfiled: list = field(default_factory=list)  # families (#18): FamilySuggestion rows

    def __post_init__(self) -> None:
        """Set what every page sees, and the summary only the index pages get."""
        d = self.data
        self.env.globals.update(
            client_id=d.client_id,
            images=d.image_by_id,
            products=d.product_by_id,
        )
        # Only index pages show these: they change with every run.
        self.counts: dict[str, int] = {
            "images": len(d.images),
            "products": len(d.products),
            "rejects": len(d.rejects),
            "matched": sum(1 for i in d.images if i.n_matches),
            "products_matched": sum(1 for p in d.products if p.n_matches),
            "misfiled": 0,  # families (#18): set by render_report
            "families": 0,  # products with a family prediction, counted by product_pages
        }
        self.summary = {
            "run_label": ", ".join(d.run_ids[:3]) + (" …" if len(d.run_ids) > 3 else ""),
            "generated_at": _when(datetime.now(UTC)),
            "counts": self.counts,
        }

    def put(self, rel: str, data: bytes) -> None:
        """Make the file at root-relative `rel` hold `data`, writing only if it differs."""
        self.written.add(rel)
        path = self.root / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            if path.parent not in self._dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.add(path.parent)
            path.write_bytes(data)
        else:
            if size == len(data) and path.read_bytes() == data:
                return
            # Not open(..., "wb"): ext4 flushes a file truncated to zero then rewritten
            # (auto_da_alloc), which made rewriting 100 000 pages 15x slower.
            with path.open("r+b") as fh:
                fh.write(data)
                fh.truncate()
        self.changed += 1

    def write(self, rel: str, template: str, **context: Any) -> None:
        """Render `template` into the page at root-relative path `rel`."""
        html = self.env.get_template(template).render(root=_root_of(rel), **context)
        self.put(rel, html.encode("utf-8"))

    def remove_stale(self, folders: Sequence[str]) -> int:
        """Delete files under `folders` that this render did not write; returns how many."""
        removed = 0
        for folder in folders:
            for dirpath, _, files in os.walk(self.root / folder):
                rel_dir = Path(dirpath).relative_to(self.root).as_posix()
                for name in files:
                    if f"{rel_dir}/{name}" not in self.written:
                        (Path(dirpath) / name).unlink(missing_ok=True)
                        removed += 1
        return removed

    def _tick(self, stage: str, done: int, total: int) -> None:
        """Report progress, when asked to."""
        if self.progress:
            self.progress(stage, done, total)

    def assets(self) -> None:
        """Copy the style sheet, the search script and the placeholder pictures."""
        for src in sorted((HERE / "static").iterdir()):
            self.put(f"assets/{src.name}", src.read_bytes())

    def image_pages(self, con: duckdb.DuckDBPyConnection) -> None:
        """One page per image with its nearest images; one query per page set."""
        images = self.data.images
        for start in range(0, len(images), PAGE_SET):
            part = images[start : start + PAGE_SET]
            found = image_matches_for(
                con, self.data.client_id, part[0].image_id, part[-1].image_id
            )
            for n, img in enumerate(part, start=start):
                self.write(
                    img.page,
                    "image.html.j2",
                    tab="images",
                    img=img,
                    matches=found.get(img.image_id, []),
                    prev=images[n - 1] if n else None,
                    next=images[n + 1] if n + 1 < len(images) else None,
                )
            self._tick("image pages", start + len(part), len(images))

    def product_pages(self, con: duckdb.DuckDBPyConnection) -> None:
        """One page per product with its images and matching products."""
        products = self.data.products
        for start in range(0, len(products), PAGE_SET):
            part = products[start : start + PAGE_SET]
            found = product_matches_for(
                con, self.data.client_id, part[0].product_id, part[-1].product_id
            )
            fams = suggestions_for(con, self.data.client_id, part[0].product_id,
                                   part[-1].product_id)
            self.counts["families"] += len(fams)
            for n, prod in enumerate(part, start=start):
                self.write(
                    prod.page,
                    "product.html.j2",
                    tab="products",
                    prod=prod,
                    matches=found.get(prod.product_id, []),
                    family=fams.get(prod.product_id),
                    prev=products[n - 1] if n else None,
                    next=products[n + 1] if n + 1 < len(products) else None,
                )
            self._tick("product pages", start + len(part), len(products))

    def index_pages(self) -> None:
        """Image and product indexes, all and per band, and the rejects list."""
        for kind, rows, template in (
            ("images", self.data.images, "images.html.j2"),
            ("products", self.data.products, "products.html.j2"),
        ):
            by_band = self._by_band(rows)
            for band, label in FILTERS:
                chips = [
                    {"band": b, "label": lab, "count": len(by_band[b]),
                     "href": list_href(kind, 1, b), "on": b == band}
                    for b, lab in FILTERS
                ]
                order = (
                    "Sorted by id." if band == "all" else "Best score first, then by id."
                )
                extra = {"chips": chips, "band_label": "" if band == "all" else label,
                         "order": order}
                self._paginate(kind, by_band[band], template, kind, band, extra)
        self._paginate("rejects", self.data.rejects, "rejects.html.j2", "rejects", "all", {})
        self._paginate("misfiled", self.misfiled, "misfiled.html.j2", "misfiled", "all", {})

    @staticmethod
    def _by_band(rows: Sequence[ImageRow | ProductRow]) -> dict[str, list]:
        """Rows of each band filter: all in id order; one band by best score, then id."""
        out: dict[str, list] = {band: [] for band, _ in FILTERS}
        out["all"] = list(rows)
        for row in rows:
            out[_band_of(row)].append(row)
        for band, items in out.items():
            if band not in ("all", "none"):
                items.sort(key=lambda r: -(r.best_score or 0.0))  # stable: id order kept
        return out

    def _paginate(
        self, kind: str, rows: Sequence, template: str, tab: str, band: str,
        extra: dict[str, Any],
    ) -> None:
        """Write `rows` as pages of `per_page`; an empty list still gets its page 1."""
        count = max(1, math.ceil(len(rows) / self.per_page))
        href = partial(list_href, kind, band=band)
        pieces = list(chunks(rows, self.per_page)) or [rows]
        for number, items in enumerate(pieces, start=1):
            first = (number - 1) * self.per_page
            pager = Pager(
                number=number, count=count, total=len(rows), first_item=first + 1,
                last_item=first + len(items),
                prev=href(number - 1) if number > 1 else None,
                next=href(number + 1) if number < count else None,
                window=_window(number, count, href), **extra,
            )
            self.write(href(number), template, tab=tab, page=pager, items=items,
                       **self.summary)

    def search_index(self) -> int:
        """Write the search shards and their manifest; returns the number of shards."""
        folder = search.SEARCH_DIR
        all_shards = search.shards(search.entries(self.data.images, self.data.products))
        for shard in all_shards:
            self.put(f"{folder}/{shard.file}", search.shard_script(shard).encode("ascii"))
        self.put(f"{folder}/manifest.js", search.manifest_script(all_shards).encode("ascii"))
        return len(all_shards)
