"""Small cached JPEG thumbnails of the catalogue images, for the report pages.

The signature stage makes each image's thumbnail from the decode it already does and
stores the JPEG bytes in the `thumb` column of the signatures (npimage.ingest.thumbnail),
so the report writes them out as they are: it decodes no image. Only an image whose
published signature has no thumbnail (signatures of npimage < 0.4, before the next run
recomputes them) is read (`decode.read_bytes`) and decoded (`decode.decode`) here, the
same way the signature stage would. A thumbnail is named by a hash of (image_id, uri,
size_bytes) and of the thumbnail settings, so a re-render reuses every thumbnail whose
image did not change and writes the others; thumbnails of images no longer in the
catalogue are pruned. An image that cannot be read gets a placeholder, never an error:
the report must render even when some files are gone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from npimage.config import Settings
from npimage.ingest.decode import ImageError, decode, read_bytes
from npimage.ingest.thumbnail import THUMB_SIZE, THUMB_VERSION, thumbnail_jpeg
from npimage.progress import StepProgress
from npimage.report.data import ImageRow
from npimage.sqlfiles import load_sql

THUMB_DIR = "thumbs"
__all__ = ["PLACEHOLDER", "THUMB_DIR", "THUMB_SIZE", "ThumbStats", "make_thumbnails",
           "prune_thumbnails", "stored_thumbnails", "thumb_path"]
#: Shown instead of a thumbnail when the image cannot be read (relative to report root).
PLACEHOLDER = "assets/unreadable.svg"
#: Stored thumbnails fetched from the warehouse per batch (bounded memory: ~10 KB each).
FETCH_ROWS = 2048

#: `stored(ids)`: (image_id, JPEG bytes) of the stored thumbnails of some of those ids.
StoredThumbs = Callable[[list[str]], Iterable[tuple[str, bytes]]]


@dataclass(frozen=True)
class ThumbStats:
    """How the thumbnail step went: written now (from stored thumbnails, or decoded),
    reused from a previous render, unreadable."""

    made: int
    reused: int
    unreadable: int
    decoded: int = 0  # of `made`: images decoded here (their signature had no thumbnail)


def thumb_path(img: ImageRow) -> str:
    """Path of the thumbnail of `img` relative to the report root."""
    key = f"{img.image_id}\0{img.uri}\0{img.size_bytes}\0{THUMB_VERSION}"
    digest = hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
    return f"{THUMB_DIR}/{digest[:2]}/{digest}.jpg"


def _existing(out_dir: Path) -> set[str]:
    """Thumbnails already on disk, as root-relative paths (one directory scan, not 100k stats)."""
    found: set[str] = set()
    root = out_dir / THUMB_DIR
    if not root.is_dir():
        return found
    for sub in os.scandir(root):
        if sub.is_dir():
            found.update(f"{THUMB_DIR}/{sub.name}/{f.name}" for f in os.scandir(sub.path))
    return found


def _write(target: Path, data: bytes) -> None:
    """Write a thumbnail atomically (a render cut short leaves no half file to reuse)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _make_one(img: ImageRow, target: Path, settings: Settings) -> str | None:
    """Decode `img` and write its thumbnail to `target`; the reason when it cannot be read."""
    if not img.uri:
        return "no uri"
    try:
        picture = decode(read_bytes(img.uri, settings.read_timeout), settings.max_pixels).rgb
    except ImageError as exc:
        return str(exc)
    target.parent.mkdir(parents=True, exist_ok=True)
    _write(target, thumbnail_jpeg(picture))
    return None


def _has_thumbs(con: duckdb.DuckDBPyConnection) -> bool:
    """Does the warehouse have signatures with a thumb column (a hand-built one may not)?"""
    rows = con.execute(load_sql("duckdb", "report_has_thumbs")).fetchall()
    return bool(rows and rows[0][0])


def stored_thumbnails(warehouse: Path | str, client_id: str) -> StoredThumbs:
    """`stored(ids)` over the warehouse's signatures (sql/duckdb/report_thumbs.sql), fetched
    FETCH_ROWS at a time on a read-only connection of its own, closed when done."""
    from npimage.report.data import connect

    def stored(ids: list[str]) -> Iterator[tuple[str, bytes]]:
        with connect(warehouse) as con:
            if not _has_thumbs(con):
                return
            con.register("wanted", pa.table({"image_id": pa.array(ids, pa.string())}))
            query = con.sql(load_sql("duckdb", "report_thumbs"), params={"client": client_id})
            reader: pa.RecordBatchReader = query.to_arrow_reader(FETCH_ROWS)
            for batch in reader:
                yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(),
                               strict=True)
    return stored


def _write_stored(todo: list[ImageRow], out_dir: Path, stored: StoredThumbs,
                  progress: StepProgress | None) -> set[str]:
    """Write the stored thumbnails of `todo`; returns the image ids written."""
    by_id = {img.image_id: img for img in todo}
    made_dirs: set[Path] = set()
    written: set[str] = set()
    for image_id, data in stored(list(by_id)):
        target = out_dir / by_id[image_id].thumb
        if target.parent not in made_dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(target.parent)
        _write(target, data)
        written.add(image_id)
        if progress and len(written) % 2000 == 0:
            progress("thumbnails", len(written), len(todo))
    return written


def make_thumbnails(
    images: Sequence[ImageRow],
    out_dir: Path,
    progress: StepProgress | None = None,
    workers: int | None = None,
    settings: Settings | None = None,
    stored: StoredThumbs | None = None,
) -> ThumbStats:
    """Give every image a thumbnail (written or reused) or the placeholder; set `img.thumb`.

    Thumbnails `stored` by the signature stage are written as they are; images without
    one are decoded here (threads: decoding and JPEG encoding release the GIL). Images
    already known as rejected are not read again: they get the placeholder.
    """
    settings = settings or Settings()
    existing = _existing(out_dir)
    todo: list[ImageRow] = []
    reused = unreadable = 0
    for img in images:
        path = thumb_path(img)
        if path in existing:
            img.thumb, reused = path, reused + 1
        elif img.rejects:
            img.thumb, unreadable = PLACEHOLDER, unreadable + 1
        else:
            img.thumb = path
            todo.append(img)
    written = _write_stored(todo, out_dir, stored, progress) if stored and todo else set()
    rest = [img for img in todo if img.image_id not in written]
    decoded = 0
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        results = pool.map(lambda i: _make_one(i, out_dir / i.thumb, settings), rest)
        for n, (img, error) in enumerate(zip(rest, results, strict=True), start=1):
            if error is None:
                decoded += 1
            else:
                img.thumb, img.thumb_error = PLACEHOLDER, error
                unreadable += 1
            if progress and (n % 500 == 0 or n == len(rest)):
                progress("thumbnails", len(written) + n, len(todo))
    if progress and todo and not rest:
        progress("thumbnails", len(todo), len(todo))
    return ThumbStats(made=len(written) + decoded, reused=reused, unreadable=unreadable,
                      decoded=decoded)


def prune_thumbnails(images: Sequence[ImageRow], out_dir: Path) -> int:
    """Delete thumbnails that no image of this render uses; returns how many."""
    keep = {img.thumb for img in images}
    stale = _existing(out_dir) - keep
    for path in stale:
        (out_dir / path).unlink(missing_ok=True)
    return len(stale)
