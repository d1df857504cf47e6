"""The local-detail signature: a small grey and colour picture of an image's content box.

Computed once per image by the signature stage and stored in the `detail` column; the
verify stage (`npimage.matching.verify`) compares two of them region by region.

Layout (DETAIL_BYTES): a version byte, a DETAIL_SIDE x DETAIL_SIDE luma thumbnail, then
CHROMA_SIDE x CHROMA_SIDE Cb and Cr thumbnails (uint8, squashed to a square like the
hashes), then the content box as 4 uint8 shares of the frame. A stored signature of
another version is recomputed by the next run (`is_current`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit
from PIL import Image

from npimage.ingest.resample import Pixels, plain_thumbnail, resize_box, thumbnail_size

#: Side of the grey detail thumbnail (pixels) and of the chroma thumbnail.
DETAIL_SIDE = 128
CHROMA_SIDE = 32
#: Version of the detail signature (its first byte): stored signatures of another version
#: are recomputed by the next run. 2: the box squashed before the YCbCr conversion, chroma
#: as 4x4 means of it, from the DCT-scaled decode (npimage 0.4).
DETAIL_VERSION = 2
#: Bytes: version, luma, Cb, Cr, content box (4 x uint8 shares of the frame).
DETAIL_BYTES = 1 + DETAIL_SIDE * DETAIL_SIDE + 2 * CHROMA_SIDE * CHROMA_SIDE + 4


def is_current(detail: bytes | None) -> bool:
    """Is this a detail signature of the current version?"""
    return detail is not None and len(detail) == DETAIL_BYTES and detail[0] == DETAIL_VERSION


#: A pixel is content when it differs by more than this from the backdrop of its row and
#: of its column (the picture's border pixels); rows/columns need CONTENT_SHARE of them.
BACKDROP_TOLERANCE = 24
CONTENT_SHARE = 0.01
#: Margin kept around the content box, as a share of its size.
BOX_MARGIN = 0.02


#: Longest side of the small copy (BOX) on which the content box is found.
BOX_SIDE = 160


def box_thumbnail(rgb: Image.Image) -> Image.Image:
    """The small copy `content_box` works on: at most BOX_SIDE, aspect kept, BOX filter.

    `thumbnail` works in place: it gets a new Image over `rgb`'s pixels, not a copy of
    them, and swaps in its resized pixels without writing into `rgb`'s. An RGB picture
    takes `box_pixels` instead (the same pixels, faster)."""
    small = rgb._new(rgb.im)
    small.thumbnail((BOX_SIDE, BOX_SIDE), Image.Resampling.BOX)
    return small


def box_pixels(rgb: Image.Image, pixels: Pixels | None = None) -> np.ndarray:
    """(h, w, 3) uint8: `box_thumbnail(rgb)`'s pixels. `pixels`: Pixels(np.asarray(rgb))
    when the caller has them (the signature stage shares them between its resizes)."""
    size = thumbnail_size(rgb.width, rgb.height, BOX_SIDE)
    if not plain_thumbnail(rgb, size):
        return np.asarray(box_thumbnail(rgb), dtype=np.uint8)
    return resize_box(Pixels(np.asarray(rgb)) if pixels is None else pixels, size)


@njit(nogil=True, cache=True)
def _far_counts(a: np.ndarray, tolerance: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row and per column of an (h, w, 3) uint8 picture: how many pixels are more than
    `tolerance` from both their row's and their column's backdrop in some channel.

    Backdrops are means of the two end pixels (one when the picture is one pixel wide or
    high), kept as 4x integers so the test is exact. One pass in Numba: NumPy needs a
    dozen passes over (h, w, 3) arrays and is slow on a last axis of 3.
    """
    h, w = a.shape[0], a.shape[1]
    kx, ky = min(2, w), min(2, h)
    rows4 = np.zeros((h, 3), np.int32)
    cols4 = np.zeros((w, 3), np.int32)
    for y in range(h):
        for c in range(3):
            t = np.int32(0)
            for i in range(kx):
                t += np.int32(a[y, i, c]) + np.int32(a[y, w - kx + i, c])
            rows4[y, c] = t * (2 // kx)
    for x in range(w):
        for c in range(3):
            t = np.int32(0)
            for i in range(ky):
                t += np.int32(a[i, x, c]) + np.int32(a[h - ky + i, x, c])
            cols4[x, c] = t * (2 // ky)
    limit = 4 * tolerance
    row_n = np.zeros(h, np.int64)
    col_n = np.zeros(w, np.int64)
    for y in range(h):
        for x in range(w):
            far_row = False
            far_col = False
            for c in range(3):
                v = 4 * np.int32(a[y, x, c])
                far_row = far_row or abs(v - rows4[y, c]) > limit
                far_col = far_col or abs(v - cols4[x, c]) > limit
            if far_row and far_col:
                row_n[y] += 1
                col_n[x] += 1
    return row_n, col_n


def content_box(rgb: Image.Image, small: Image.Image | np.ndarray | None = None
                ) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of what stands out from the backdrop (margins dropped).

    The backdrop of a row is the mean of its two end pixels, of a column its two end pixels
    (a studio gradient or plain white); a pixel far from both is content. A picture without
    a backdrop (a photo) keeps its whole frame. `small`: `box_thumbnail(rgb)` or
    `box_pixels(rgb)` when the caller has it already.
    """
    small = box_pixels(rgb) if small is None else small
    a = np.ascontiguousarray(np.asarray(small, dtype=np.uint8))
    h, w = a.shape[:2]
    row_n, col_n = _far_counts(a, BACKDROP_TOLERANCE)
    ys = np.flatnonzero(row_n / w > CONTENT_SHARE)
    xs = np.flatnonzero(col_n / h > CONTENT_SHARE)
    if len(ys) < h * 0.1 or len(xs) < w * 0.1:
        return (0, 0, rgb.width, rgb.height)
    my, mx = BOX_MARGIN * (ys[-1] - ys[0] + 1), BOX_MARGIN * (xs[-1] - xs[0] + 1)
    sx, sy = rgb.width / w, rgb.height / h
    return (max(0, int((xs[0] - mx) * sx)), max(0, int((ys[0] - my) * sy)),
            min(rgb.width, int(np.ceil((xs[-1] + 1 + mx) * sx))),
            min(rgb.height, int(np.ceil((ys[-1] + 1 + my) * sy))))


def detail_signature(rgb: Image.Image, small: Image.Image | np.ndarray | None = None,
                     pixels: Pixels | None = None) -> bytes:
    """Luma thumbnail (DETAIL_SIDE^2) then Cb and Cr thumbnails (CHROMA_SIDE^2 each), uint8,
    of the content box (so a pack fills the thumbnail whatever its margins).

    The box is cut from `rgb` and squashed to DETAIL_SIDE^2 with the BOX filter, then
    converted to YCbCr (16 000 pixels, not the whole crop); the chroma thumbnails are
    its 4x4 means (a BOX of a BOX: within one level of a direct BOX of the crop).
    `small`: `box_thumbnail(rgb)` when the caller has it already; `pixels`:
    Pixels(np.asarray(rgb)). The BOX resizes of an RGB picture are
    npimage.ingest.resample's (Pillow's bytes, faster).
    """
    side = (DETAIL_SIDE, DETAIL_SIDE)
    if rgb.mode == "RGB":
        pixels = Pixels(np.asarray(rgb)) if pixels is None else pixels
    box = content_box(rgb, box_pixels(rgb, pixels) if small is None else small)
    if pixels is not None:
        squashed = Image.fromarray(resize_box(pixels, side, box))
    else:
        squashed = rgb.resize(side, Image.Resampling.BOX, box=box)
    ycc = squashed.convert("YCbCr")
    chroma = ycc.reduce(DETAIL_SIDE // CHROMA_SIDE)
    frac = np.array([box[0] / rgb.width, box[1] / rgb.height, box[2] / rgb.width,
                     box[3] / rgb.height])
    box_bytes = np.round(frac * 255).astype(np.uint8).tobytes()
    return (bytes([DETAIL_VERSION]) + ycc.getchannel(0).tobytes()
            + chroma.getchannel(1).tobytes() + chroma.getchannel(2).tobytes() + box_bytes)


def content_boxes(details: Sequence[bytes]) -> np.ndarray:
    """(n, 4) float32: the content box (left, top, right, bottom) as shares of the frame."""
    raw = np.frombuffer(b"".join(details), np.uint8).reshape(len(details), DETAIL_BYTES)
    return raw[:, -4:].astype(np.float32) / 255


def unpack_details(details: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(grey (n, S, S) uint8, chroma (n, C, C, 2) uint8) from stored detail signatures."""
    raw = np.frombuffer(b"".join(details), np.uint8).reshape(len(details), DETAIL_BYTES)[:, 1:]
    g = DETAIL_SIDE * DETAIL_SIDE
    grey = raw[:, :g].reshape(-1, DETAIL_SIDE, DETAIL_SIDE)
    c = CHROMA_SIDE * CHROMA_SIDE
    chroma = np.stack([raw[:, g:g + c], raw[:, g + c:g + 2 * c]], axis=-1).reshape(
        -1, CHROMA_SIDE, CHROMA_SIDE, 2)
    return grey, chroma
