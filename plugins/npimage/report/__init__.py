"""Static HTML review report of one client: what a reviewer opens to decide merges.

`render_report(warehouse, client_id, out_dir)` reads the DuckDB warehouse (read-only) and
writes a report that opens from disk, needs no server and no network: an index of images
and of products with thumbnails, a band filter and a search box; a page per image with its
nearest images side by side, the band in words and every score component as a bar; a page
per product with its matching products; the list of images that could not be read.
Everything is paginated or split (see pages.py), so it stays fast at 100 000 images.

A re-render updates the report in place: it rewrites only the pages whose content
changed, writes the index pages last, then deletes the pages of images and products gone
from the warehouse. Thumbnails come from the signatures (the signature stage makes them:
no image is decoded here) and are cached across renders (see thumbs.py). On disks where
creating and deleting files is slow, this keeps a nightly re-render cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from npimage.progress import StepProgress
from npimage.report.data import connect, load_report_data
from npimage.report.families import misfiled
from npimage.report.pages import PER_PAGE, Writer
from npimage.report.thumbs import make_thumbnails, prune_thumbnails, stored_thumbnails

__all__ = ["render_report"]

#: Folders of `out_dir` a render owns: files in them it did not write are deleted.
MANAGED = ("assets", "i", "p", "list", "search")



def render_report(
    warehouse: Path,
    client_id: str,
    out_dir: Path,
    progress: StepProgress | None = None,
    *,
    per_page: int = PER_PAGE,
    workers: int | None = None,
) -> Path:
    """Render the report of `client_id` into `out_dir`; return the path of its index.html.

    `progress(stage, done, total)` is called as thumbnails and pages are made (stages:
    "thumbnails", "image pages", "product pages", "search", "indexes"). `per_page` is the
    number of entries per index page; `workers` the threads making thumbnails (default:
    one per core). Raises LookupError when the client has no image in the warehouse.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with connect(warehouse) as con:
        data = load_report_data(con, client_id)
    # Thumbnails stored by the signature stage are written out (their own connection);
    # only images whose signature has none (older runs) are decoded, with no connection.
    make_thumbnails(data.images, out_dir, progress, workers,
                    stored=stored_thumbnails(warehouse, client_id))
    writer = Writer(out_dir, data, per_page=per_page, progress=progress)
    where = str(warehouse)  # a data dir, or a warehouse.duckdb inside one
    data_dir = Path(where).parent if where.endswith(".duckdb") else Path(where)
    writer.env.globals["decision_of"] = _decisions(data_dir, client_id)
    writer.assets()
    with connect(warehouse) as con:
        writer.image_pages(con)
        writer.product_pages(con)
        writer.misfiled = misfiled(con, client_id)
        writer.counts["misfiled"] = len(writer.misfiled)
    writer.search_index()
    _tick(progress, "search")
    writer.index_pages()  # last: index.html links only to pages that exist
    _tick(progress, "indexes")
    writer.remove_stale(MANAGED)
    prune_thumbnails(data.images, out_dir)
    return out_dir / "index.html"


def _decisions(data_dir: Path, client_id: str) -> Callable[[str, str, str], dict | None]:
    """decision_of(kind, a, b): the reviewers' decision in force for a pair, or None.

    Decisions live in the data dir beside the warehouse (npimage.review.store); a page
    shows the decision of each of its pairs, so re-rendering picks up new decisions.
    """
    from npimage.review.store import latest

    table = latest(data_dir, client_id)
    by_pair = {(r["kind"], r["item_id"], r["match_id"]): r for r in table.to_pylist()}

    def decision_of(kind: str, a: str, b: str) -> dict | None:
        first, second = sorted((a, b))
        return by_pair.get((kind, first, second))

    return decision_of


def _tick(progress: StepProgress | None, stage: str) -> None:
    """Report a one-step stage as done."""
    if progress:
        progress(stage, 1, 1)
