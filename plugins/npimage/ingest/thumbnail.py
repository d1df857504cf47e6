"""The report's thumbnail of an image: a small JPEG made by the signature stage.

The signature stage has every image decoded already; it makes the thumbnail from that
working copy and stores the JPEG bytes in the `thumb` column of its signatures, so a
reused signature carries its thumbnail forward and the report (npimage.report.thumbs)
renders without decoding any image again.
"""

from __future__ import annotations

import io

from PIL import Image

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


def thumbnail_jpeg(rgb: Image.Image) -> bytes:
    """JPEG bytes of `rgb` fitted into THUMB_SIZE (BOX filter: an area mean, the cheapest
    resampling that does not alias when shrinking)."""
    size = fit_size(rgb.width, rgb.height, THUMB_SIZE)
    small = rgb if size == rgb.size else rgb.resize(size, Image.Resampling.BOX)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
