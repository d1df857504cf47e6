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
from functools import lru_cache

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
def _backdrops4(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows (h, 3), columns (w * 3,)) int32: 4x the backdrop of each row and column of an
    (h, w, 3) uint8 picture: the mean of its two end pixels (its one pixel when the
    picture is one pixel wide or high), kept as integers so the far test is exact."""
    h, w = a.shape[0], a.shape[1]
    kx, ky = min(2, w), min(2, h)
    rows4 = np.empty((h, 3), np.int32)
    cols4 = np.empty(w * 3, np.int32)
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
            cols4[3 * x + c] = t * (2 // ky)
    return rows4, cols4


@njit(nogil=True, cache=True)
def _far_counts(a: np.ndarray, tolerance: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row and per column of an (h, w, 3) uint8 C-contiguous picture: how many pixels
    are more than `tolerance` from both their row's and their column's backdrop
    (`_backdrops4`) in some channel.

    One pass in Numba (NumPy needs a dozen passes over (h, w, 3) arrays and is slow on a
    last axis of 3), each row in two branch-free loops (the distances into a flag per
    pixel, then the flags summed into the row's and the columns' counts), which the
    compiler vectorises: ~5x faster than a test per pixel with early exits.
    """
    h, w = a.shape[0], a.shape[1]
    rows4, cols4 = _backdrops4(a)
    limit = 4 * tolerance
    flat = a.reshape(h, w * 3)
    row_n = np.zeros(h, np.int64)
    col_n = np.zeros(w, np.int32)
    far = np.empty(w, np.int32)
    for y in range(h):
        row = flat[y]
        r0, r1, r2 = rows4[y, 0], rows4[y, 1], rows4[y, 2]
        for x in range(w):
            v0 = 4 * np.int32(row[3 * x])
            v1 = 4 * np.int32(row[3 * x + 1])
            v2 = 4 * np.int32(row[3 * x + 2])
            d_row = max(abs(v0 - r0), abs(v1 - r1), abs(v2 - r2))
            d_col = max(abs(v0 - cols4[3 * x]), abs(v1 - cols4[3 * x + 1]),
                        abs(v2 - cols4[3 * x + 2]))
            far[x] = np.int32(min(d_row, d_col) > limit)
        n = np.int32(0)
        for x in range(w):
            n += far[x]
            col_n[x] += far[x]
        row_n[y] = n
    return row_n, col_n.astype(np.int64)


def content_box(rgb: Image.Image, small: Image.Image | np.ndarray | None = None
                ) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of what stands out from the backdrop (margins dropped).

    The backdrop of a row is the mean of its two end pixels, of a column its two end pixels
    (a studio gradient or plain white); a pixel far from both is content. A picture without
    a backdrop (a photo) keeps its whole frame. `small`: `box_thumbnail(rgb)` or
    `box_pixels(rgb)` when the caller has it already. Found by `_box_in` in one compiled
    call (the counts, the rows and columns kept, the box scaled to `rgb`).
    """
    small = box_pixels(rgb) if small is None else small
    a = np.ascontiguousarray(np.asarray(small, dtype=np.uint8)[:, :, :3])  # RGB of RGBA
    left, top, right, bottom = _box_in(a, rgb.width, rgb.height, BACKDROP_TOLERANCE,
                                       CONTENT_SHARE, BOX_MARGIN)
    return int(left), int(top), int(right), int(bottom)


@njit(nogil=True, cache=True)
def _box_in(a: np.ndarray, width: int, height: int, tolerance: int, share: float,
            margin: float) -> tuple[int, int, int, int]:
    """`content_box` of a width x height picture from its small copy `a` ((h, w, 3) uint8):
    the first and last rows and columns with more than `share` far pixels (`_far_counts`),
    widened by `margin` of the box's size and scaled to the picture; its whole frame when
    fewer than a tenth of the rows or columns are content. The same float64 operations as
    NumPy's in the same order (no fastmath), so the same box to the pixel."""
    h, w = a.shape[0], a.shape[1]
    row_n, col_n = _far_counts(a, tolerance)
    y0, y1, ny = _kept(row_n, w, share)
    x0, x1, nx = _kept(col_n, h, share)
    if ny < h * 0.1 or nx < w * 0.1:
        return 0, 0, width, height
    my, mx = margin * (y1 - y0 + 1), margin * (x1 - x0 + 1)
    sx, sy = width / w, height / h
    return (max(0, int((x0 - mx) * sx)), max(0, int((y0 - my) * sy)),
            min(width, int(np.ceil((x1 + 1 + mx) * sx))),
            min(height, int(np.ceil((y1 + 1 + my) * sy))))


@njit(nogil=True, cache=True)
def _kept(counts: np.ndarray, across: int, share: float) -> tuple[int, int, int]:
    """(first, last, how many) of the lines whose count / `across` exceeds `share`."""
    first, last, n = -1, -1, 0
    for i in range(counts.shape[0]):
        if counts[i] / across > share:
            if first < 0:
                first = i
            last = i
            n += 1
    return first, last, n


def detail_signature(rgb: Image.Image, small: Image.Image | np.ndarray | None = None,
                     pixels: Pixels | None = None) -> bytes:
    """Luma thumbnail (DETAIL_SIDE^2) then Cb and Cr thumbnails (CHROMA_SIDE^2 each), uint8,
    of the content box (so a pack fills the thumbnail whatever its margins).

    The box is cut from `rgb` and squashed to DETAIL_SIDE^2 with the BOX filter, then
    converted to YCbCr (16 000 pixels, not the whole crop); the chroma thumbnails are
    its 4x4 means (a BOX of a BOX: within one level of a direct BOX of the crop).
    `small`: `box_thumbnail(rgb)` when the caller has it already; `pixels`:
    Pixels(np.asarray(rgb)). The BOX resizes of an RGB picture are
    npimage.ingest.resample's, the conversion and the chroma means `_planes`' (Pillow's
    bytes, faster: no Image, YCbCr conversion or `reduce` of Pillow's per picture).
    """
    side = (DETAIL_SIDE, DETAIL_SIDE)
    if rgb.mode == "RGB":
        pixels = Pixels(np.asarray(rgb)) if pixels is None else pixels
    box = content_box(rgb, box_pixels(rgb, pixels) if small is None else small)
    if pixels is not None:
        squashed = resize_box(pixels, side, box)
    else:
        squashed = np.asarray(rgb.resize(side, Image.Resampling.BOX, box=box).convert("RGB"))
    planes = _planes(squashed, *_ycc_tables(), DETAIL_SIDE // CHROMA_SIDE)
    frac = np.array([box[0] / rgb.width, box[1] / rgb.height, box[2] / rgb.width,
                     box[3] / rgb.height])
    box_bytes = np.round(frac * 255).astype(np.uint8).tobytes()
    return bytes([DETAIL_VERSION]) + planes.tobytes() + box_bytes


@lru_cache(maxsize=1)
def _ycc_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's RGB -> YCbCr (ConvertYCbCr.c: 6-bit fixed-point tables), as
    (luma (3, 256) int32, cb (256, 256), cr (256, 256) int16: in L2) tables for `_planes`.

    Y sums one table per channel: JFIF's weights x 64, rounded half up, shifted by 6.
    Cb's blue and Cr's red weight are 1/2 (a table of 32 v), so Cb = floor((D[r, g] + b)
    / 2) + 128 with D[r, g] = Cb'(r, g, 0) + Cb'(r, g, 1) (Cb' = Cb - 128, floor(D / 2) +
    floor((D + 1) / 2) = D), and Cr likewise with D[g, b]: D is read from Pillow's own
    conversion of two 256 x 256 pictures, so it is Pillow's to the bit. Pillow's result
    for all 2^24 colours: tests/test_resample.py."""
    luma = np.floor(np.outer((0.299, 0.587, 0.114), np.arange(256)) * 64 + 0.5)
    i, j = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")

    def signed(r: np.ndarray | int, g: np.ndarray | int, b: np.ndarray | int,
               band: int) -> np.ndarray:
        rgb = np.stack(np.broadcast_arrays(r, g, b), axis=-1).astype(np.uint8)
        return np.asarray(Image.fromarray(rgb).convert("YCbCr"))[..., band].astype(np.int32) - 128

    cb = signed(i, j, 0, 1) + signed(i, j, 1, 1)
    cr = signed(0, i, j, 2) + signed(1, i, j, 2)
    return luma.astype(np.int32), cb.astype(np.int16), cr.astype(np.int16)


@njit(nogil=True, cache=True)
def _planes(rgb: np.ndarray, luma: np.ndarray, cb: np.ndarray, cr: np.ndarray,
            factor: int) -> np.ndarray:
    """The detail's pixel bytes of an (n, n, 3) uint8 RGB picture converted to YCbCr as
    Pillow converts it (`_ycc_tables`): its Y plane, then its Cb and Cr planes reduced by
    `factor` (n a multiple of it) as Pillow's `Image.reduce(factor)` rounds a mean, (sum +
    half the count) // count for a power-of-two count (Reduce.c's multiplier is then an
    exact power of two): the bytes of `ycc.getchannel(0)`, `ycc.reduce(factor)
    .getchannel(1)` and `(2)`, without an Image or a conversion of Pillow's."""
    n = rgb.shape[0]
    m = n // factor
    count = factor * factor
    out = np.empty(n * n + 2 * m * m, np.uint8)
    sums = np.zeros((2, m * m), np.int32)
    flat = rgb.reshape(-1)
    blue_of, red_of = cb.reshape(-1), cr.reshape(-1)  # flat: [(r << 8) | g], [(g << 8) | b]
    blue = np.empty(n, np.int32)  # Cb - 128 and Cr - 128 of one row
    red = np.empty(n, np.int32)
    for y in range(n):
        at = y * n
        for x in range(n):
            r = np.int32(flat[3 * (at + x)])
            g = np.int32(flat[3 * (at + x) + 1])
            b = np.int32(flat[3 * (at + x) + 2])
            out[at + x] = (luma[0, r] + luma[1, g] + luma[2, b]) >> 6
            blue[x] = (np.int32(blue_of[(r << 8) | g]) + b) >> 1
            red[x] = (np.int32(red_of[(g << 8) | b]) + r) >> 1
        first = (y // factor) * m
        for bx in range(m):
            sum_b = np.int32(128 * factor)
            sum_r = np.int32(128 * factor)
            for x in range(bx * factor, bx * factor + factor):
                sum_b += blue[x]
                sum_r += red[x]
            sums[0, first + bx] += sum_b
            sums[1, first + bx] += sum_r
    for c in range(2):
        for i in range(m * m):
            out[n * n + c * m * m + i] = (sums[c, i] + count // 2) // count
    return out


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
