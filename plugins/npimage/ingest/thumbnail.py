"""The report's thumbnail of an image: a small JPEG made by the signature stage.

The signature stage has every image decoded already; it makes the thumbnail from that
working copy and stores the JPEG bytes in the `thumb` column of its signatures, so a
reused signature carries its thumbnail forward and the report (npimage.report.thumbs)
renders without decoding any image again.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from npimage.ingest.resample import Pixels, resize_box

#: Longest side in pixels: two side by side fit a laptop screen with the details beside.
THUMB_SIZE = 240
JPEG_QUALITY = 80
#: Changing the look of thumbnails changes this (and the report's file names).
THUMB_VERSION = f"v2-{THUMB_SIZE}-q{JPEG_QUALITY}"


def fit_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(w, h) of a picture fitted into side x side, aspect kept, never enlarged."""
    if max(width, height) <= side:
        return width, height
    if width >= height:
        return side, max(1, round(height * side / width))
    return max(1, round(width * side / height)), side


def thumbnail_jpeg(rgb: Image.Image, pixels: Pixels | None = None) -> bytes:
    """JPEG bytes of `rgb` fitted into THUMB_SIZE (BOX filter: an area mean, the cheapest
    resampling that does not alias when shrinking).

    An RGB picture is resized by npimage.ingest.resample (Pillow's pixels, faster; the
    same `info` carried over as Pillow's resize does, so the same JPEG bytes). `pixels`:
    Pixels(np.asarray(rgb)) when the caller has them."""
    size = fit_size(rgb.width, rgb.height, THUMB_SIZE)
    if size == rgb.size:
        small = rgb
    elif rgb.mode == "RGB":
        px = Pixels(np.asarray(rgb)) if pixels is None else pixels
        small = Image.fromarray(resize_box(px, size))
        small.info = rgb.info.copy()
    else:
        small = rgb.resize(size, Image.Resampling.BOX)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
