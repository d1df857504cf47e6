"""Small cached JPEG thumbnails of the catalogue images, for the report pages.

Each image's bytes are read once (`decode.read_bytes`) and decoded once (`decode.decode`,
which already bounds the picture to a small working copy). A thumbnail is named by a hash
of (image_id, uri, size_bytes) and of the thumbnail settings, so a re-render reuses every
thumbnail whose image did not change and makes the others; thumbnails of images no longer
in the catalogue are pruned. An image that cannot be read gets a placeholder, never an
error: the report must render even when some files are gone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from npimage.config import Settings
from npimage.ingest.decode import ImageError, decode, read_bytes
from npimage.progress import StepProgress
from npimage.report.data import ImageRow

THUMB_DIR = "thumbs"
#: Longest side in pixels: two side by side fit a laptop screen with the details beside.
THUMB_SIZE = 240
JPEG_QUALITY = 80
#: Changing the look of thumbnails changes their names, so old ones are not reused.
THUMB_VERSION = f"v1-{THUMB_SIZE}-q{JPEG_QUALITY}"
#: Shown instead of a thumbnail when the image cannot be read (relative to report root).
PLACEHOLDER = "assets/unreadable.svg"



@dataclass(frozen=True)
class ThumbStats:
    """How the thumbnail step went: made now, reused from a previous render, unreadable."""

    made: int
    reused: int
    unreadable: int


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


def _make_one(img: ImageRow, target: Path, settings: Settings) -> str | None:
    """Write the thumbnail of `img` to `target`; the reason when the image cannot be read."""
    if not img.uri:
        return "no uri"
    try:
        picture = decode(read_bytes(img.uri, settings.read_timeout), settings.max_pixels).rgb
    except ImageError as exc:
        return str(exc)
    picture.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    picture.save(tmp, "JPEG", quality=JPEG_QUALITY, optimize=True)
    os.replace(tmp, target)
    return None


def make_thumbnails(
    images: Sequence[ImageRow],
    out_dir: Path,
    progress: StepProgress | None = None,
    workers: int | None = None,
    settings: Settings | None = None,
) -> ThumbStats:
    """Give every image a thumbnail (made or reused) or the placeholder; set `img.thumb`.

    Images already known as rejected are not read again: they get the placeholder.
    Decoding and JPEG encoding release the GIL, so threads use every core.
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
    made = 0
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        results = pool.map(lambda i: _make_one(i, out_dir / i.thumb, settings), todo)
        for n, (img, error) in enumerate(zip(todo, results, strict=True), start=1):
            if error is None:
                made += 1
            else:
                img.thumb, img.thumb_error = PLACEHOLDER, error
                unreadable += 1
            if progress and (n % 500 == 0 or n == len(todo)):
                progress("thumbnails", n, len(todo))
    return ThumbStats(made=made, reused=reused, unreadable=unreadable)


def prune_thumbnails(images: Sequence[ImageRow], out_dir: Path) -> int:
    """Delete thumbnails that no image of this render uses; returns how many."""
    keep = {img.thumb for img in images}
    stale = _existing(out_dir) - keep
    for path in stale:
        (out_dir / path).unlink(missing_ok=True)
    return len(stale)
