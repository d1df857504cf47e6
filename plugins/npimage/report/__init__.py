"""Static HTML review report of one client: what a reviewer opens to decide merges.

`render_report(warehouse, client_id, out_dir)` reads the DuckDB warehouse (read-only) and
writes a report that opens from disk, needs no server and no network: an index of images
and of products with thumbnails, a band filter and a search box; a page per image with its
nearest images side by side, the band in words and every score component as a bar; a page
per product with its matching products; the list of images that could not be read.
Everything is paginated or split (see pages.py), so it stays fast at 100 000 images.

A render is near-atomic: pages are written to a staging folder, then swapped in, so a
reader never sees half a report and pages of images gone from the catalogue disappear.
Thumbnails are cached across renders (see thumbs.py).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from npimage.report.data import connect, load_report_data
from npimage.report.pages import PER_PAGE, Writer
from npimage.report.thumbs import make_thumbnails, prune_thumbnails

__all__ = ["render_report"]

#: What a render owns in `out_dir` and replaces as a whole (thumbs/ is a cache, kept).
MANAGED = ("assets", "i", "p", "list", "search")

Progress = Callable[[str, int, int], None]


def render_report(
    warehouse: Path,
    client_id: str,
    out_dir: Path,
    progress: Progress | None = None,
    *,
    per_page: int = PER_PAGE,
    workers: int | None = None,
) -> Path:
    """Render the report of `client_id` into `out_dir`; return the path of its index.html.

    `progress(stage, done, total)` is called as thumbnails and pages are made (stages:
    "thumbnails", "image pages", "product pages", "indexes", "search"). `per_page` is the
    number of entries per index page; `workers` the threads making thumbnails (default:
    one per core). Raises LookupError when the client has no image in the warehouse.
    """
    out_dir = Path(out_dir)
    with connect(Path(warehouse)) as con:
        data = load_report_data(con, client_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".render-*"):  # left by a render that was killed
        shutil.rmtree(stale, ignore_errors=True)
    # The connection is closed while thumbnails are made (slow): no lock held meanwhile.
    make_thumbnails(data.images, out_dir, progress, workers)
    stage = out_dir / f".render-{uuid.uuid4().hex}"
    try:
        writer = Writer(stage, data, per_page=per_page, progress=progress)
        writer.assets()
        with connect(Path(warehouse)) as con:
            writer.image_pages(con)
            writer.product_pages(con)
        writer.index_pages()
        if progress:
            progress("indexes", 1, 1)
        writer.search_index()
        if progress:
            progress("search", 1, 1)
        _swap_in(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    prune_thumbnails(data.images, out_dir)
    return out_dir / "index.html"


def _swap_in(stage: Path, out_dir: Path) -> None:
    """Replace the managed folders and index.html of `out_dir` by those of `stage`."""
    old = stage / ".old"
    old.mkdir()
    for name in MANAGED:
        if (out_dir / name).exists():
            os.replace(out_dir / name, old / name)
        os.replace(stage / name, out_dir / name)
    os.replace(stage / "index.html", out_dir / "index.html")
