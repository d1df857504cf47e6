"""Pillow's BOX, BILINEAR and LANCZOS resizes of 8-bit pictures, to the same bytes, in less time.

Why: the signature stage resizes every picture three times with Pillow's BOX filter (the
small copy the content box is found on, the detail thumbnail, the report's thumbnail)
and once with BILINEAR (the hashes' grey copy): ~0.25 ms each for a 350 px photo on this
machine, the largest part of its per-image work after the decode. Pillow computes each
output pixel on its own, one channel after the other; here each pass is a run of
whole-row multiply-adds that the compiler vectorises (a transposition, made once per
picture, turns the horizontal pass into one): about twice as fast, transpositions counted.
The LANCZOS fit of a large picture's working copy (`fit_lanczos`, e.g. a 1600 px JPEG
decoded at 1/2 and fitted 800 -> 512 px) is its costliest resize: ~2x faster here too.

Same bytes as Pillow (13.x, `Image.resize(size, filter, box)`) by construction:
- the same filter coefficients: Pillow's `precompute_coeffs` (box corners as C floats,
  the same double-precision operations in the same order), then its 22-bit fixed point
  (`normalize_coeffs_8bpc`);
- the same passes in the same order (Pillow 13 puts the vertical one first when the height
  shrinks much more than the width), each rounded to 8 bits; a pass Pillow skips (size
  and box unchanged on that axis) is skipped here too, and a box of whole pixels of the
  output's size is a crop, as there;
- the same integer arithmetic: a sum started at half a unit, shifted and clipped to 0-255.
tests/test_resample.py compares both on random pictures, sizes and boxes.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import njit
from PIL import Image

#: Fixed-point bits of Pillow's 8-bit resampling coefficients (PRECISION_BITS in Resample.c).
PRECISION_BITS = 32 - 8 - 2


#: The filters done here (Pillow's Resampling.BOX, BILINEAR and LANCZOS) and their support.
BOX, BILINEAR, LANCZOS = 0, 1, 2
_SUPPORT = (0.5, 1.0, 3.0)
#: Pillow's `thumbnail` default: a picture shrunk more than this many times is first
#: reduced by an integer box factor (`Image.reduce`), then resampled.
REDUCING_GAP = 2.0


@njit(cache=True, nogil=True)
def _sinc(x: float) -> float:
    """Resample.c's sinc_filter."""
    if x == 0.0:
        return 1.0
    x = x * np.pi
    return float(np.sin(x) / x)


@njit(cache=True, nogil=True)
def _filter(kind: int, x: float) -> float:
    """Resample.c's box_filter (kind BOX), bilinear_filter (BILINEAR) or lanczos_filter
    (LANCZOS: the same double-precision sinc, libm's sin)."""
    if kind == BOX:
        return 1.0 if x > -0.5 and x <= 0.5 else 0.0
    if kind == LANCZOS:
        return _sinc(x) * _sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0
    if x < 0.0:
        x = -x
    return 1.0 - x if x < 1.0 else 0.0


@njit(cache=True, nogil=True)
def _coeffs(in_size: int, in0: float, span: float, out_size: int, kind: int,
            base_support: float) -> tuple[np.ndarray, np.ndarray]:
    """(bounds (out_size, 2): first input index and count, kk (out_size, ksize) int32) of
    filter `kind` from [in0, in0 + span) of `in_size` samples to `out_size`: Pillow's
    precompute_coeffs and normalize_coeffs_8bpc, operation for operation."""
    scale = span / out_size
    filterscale = scale if scale > 1.0 else 1.0
    support = base_support * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int64)
    kk = np.zeros((out_size, ksize), np.int32)
    weights = np.zeros(ksize)
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = in0 + (xx + 0.5) * scale
        ww = 0.0
        xmin = int(center - support + 0.5)  # C's (int): truncation towards zero
        if xmin < 0:
            xmin = 0
        xmax = int(center + support + 0.5)
        if xmax > in_size:
            xmax = in_size
        xmax -= xmin
        for x in range(xmax):
            v = (x + xmin - center + 0.5) * ss
            w = _filter(kind, v)
            weights[x] = w
            ww += w
        for x in range(xmax):
            k = weights[x] / ww if ww != 0.0 else weights[x]
            scaled = k * (1 << PRECISION_BITS)
            kk[xx, x] = int(-0.5 + scaled) if k < 0 else int(0.5 + scaled)
        bounds[xx, 0] = xmin
        bounds[xx, 1] = xmax
    return bounds, kk


@lru_cache(maxsize=64)
def _kernel(in_size: int, in0: float, span: float, out_size: int, kind: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """`_coeffs` of filter `kind`, kept for the next picture of the same size (most of a
    catalogue's pictures share a few sizes: their thumbnails, the same coefficients; a few
    dozen entries, at most ~35 KB each for a LANCZOS fit to 512 px, bound the memory).
    Shared: never written (`resize` shifts a copy of the bounds); not flagged read-only,
    which would make Numba compile every kernel taking them once more."""
    return _coeffs(in_size, in0, span, out_size, kind, _SUPPORT[kind])


@njit(cache=True, nogil=True)
def _rows_pass(src: np.ndarray, start: int, bounds: np.ndarray, kk: np.ndarray,
               out: np.ndarray) -> None:
    """out[i] = clip8(sum over t of src[bounds[i, 0] + t, start:] * kk[i, t]) for whole
    uint8 rows (as long as out's), in Pillow's fixed point (a sum started at half a unit,
    shifted, clipped)."""
    n = out.shape[1]
    acc = np.empty(n, np.int32)
    for i in range(out.shape[0]):
        acc[:] = 1 << (PRECISION_BITS - 1)
        first = bounds[i, 0]
        for t in range(bounds[i, 1]):
            k = kk[i, t]
            row = src[first + t, start:start + n]  # (not row[start + j]: no SIMD then)
            for j in range(n):
                acc[j] += np.int32(row[j]) * k
        for j in range(n):
            v = acc[j] >> PRECISION_BITS
            out[i, j] = 0 if v < 0 else (255 if v > 255 else v)


@njit(cache=True, nogil=True)
def _transpose3(a: np.ndarray, out: np.ndarray) -> None:
    """out[x, y] = a[y, x] for (h, w, 3) uint8 pictures (written in order, the three
    channels spelt out: ~4x faster than a loop over them)."""
    for x in range(a.shape[1]):
        for y in range(a.shape[0]):
            out[x, y, 0] = a[y, x, 0]
            out[x, y, 1] = a[y, x, 1]
            out[x, y, 2] = a[y, x, 2]


@njit(cache=True, nogil=True)
def _transpose1(a: np.ndarray, out: np.ndarray) -> None:
    """out[x, y] = a[y, x] for (h, w, 1) uint8 pictures."""
    for x in range(a.shape[1]):
        for y in range(a.shape[0]):
            out[x, y, 0] = a[y, x, 0]


def _turned(a: np.ndarray) -> np.ndarray:
    """(w, h, c): the (h, w, c) pixels transposed."""
    out = np.empty((a.shape[1], a.shape[0], a.shape[2]), np.uint8)
    (_transpose3 if a.shape[2] == 3 else _transpose1)(a, out)
    return out


@njit(cache=True, nogil=True)
def _luma(rgb: np.ndarray) -> np.ndarray:
    """(a, b, 1) uint8: Pillow's RGB -> L of (a, b, 3) uint8 C-contiguous pixels (Convert.c's
    L24: the ITU-R 601 weights in 16-bit fixed point, rounded), pixel for pixel. Unsigned
    32-bit sums over the flat bytes: the form the compiler vectorises (~6x faster than
    int32 over (n, 3) rows)."""
    flat = rgb.reshape(-1)
    n = flat.shape[0] // 3
    out = np.empty(n, np.uint8)
    for i in range(n):
        out[i] = np.uint8((np.uint32(flat[3 * i]) * np.uint32(19595)
                           + np.uint32(flat[3 * i + 1]) * np.uint32(38470)
                           + np.uint32(flat[3 * i + 2]) * np.uint32(7471)
                           + np.uint32(0x8000)) >> np.uint32(16))
    return out.reshape(rgb.shape[0], rgb.shape[1], 1)


def _span(box: tuple[float, float, float, float], axis: int) -> tuple[float, float]:
    """(start, length) of the box on an axis as Pillow's C code sees them: C floats, and
    their difference taken in float."""
    lo, hi = np.float32(box[axis]), np.float32(box[axis + 2])
    return float(lo), float(hi - lo)


class Pixels:
    """A picture's pixels, (h, w, c) uint8 (c = 3 for RGB, 1 for L), and their
    transposition, made once when a first resize needs it and shared by the next ones
    (the signature stage resizes each picture three times)."""

    def __init__(self, array: np.ndarray, turned: np.ndarray | None = None) -> None:
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 3) or array.dtype != np.uint8:
            raise ValueError(f"Pixels takes (h, w, 3) RGB or (h, w) L uint8 pixels, "
                             f"not {array.shape} {array.dtype}")
        self.array = np.ascontiguousarray(array)
        self._turned = turned

    def grey(self) -> Pixels:
        """The (h, w, 1) pixels of `Image.convert("L")` of these RGB ones (`_luma`), their
        transposition made from this one's (a pass over each, no transposition of its own)."""
        return Pixels(_luma(self.array), _luma(self.turned))

    @property
    def turned(self) -> np.ndarray:
        """(w, h, c): the pixels transposed."""
        if self._turned is None:
            self._turned = _turned(self.array)
        return self._turned


def _horizontal(turned: np.ndarray, rows: tuple[int, int], xsize: int,
                box: tuple[float, float, float, float], kind: int) -> np.ndarray:
    """The horizontal pass over rows [first, last) of a picture given transposed (w, h, c):
    (last - first, xsize, c), done as a vertical pass on the transposed rows (whole rows
    of multiply-adds), then turned back."""
    w, h, c = turned.shape
    first, last = rows
    x0, xlen = _span(box, 0)
    bounds, kk = _kernel(w, x0, xlen, xsize, kind)
    done = np.empty((xsize, last - first, c), np.uint8)
    _rows_pass(turned.reshape(w, h * c), first * c, bounds, kk,
               done.reshape(xsize, (last - first) * c))
    return _turned(done)


def _vertical(a: np.ndarray, bounds: np.ndarray, kk: np.ndarray) -> np.ndarray:
    """The vertical pass: (len(bounds), w, c)."""
    out = np.empty((len(bounds), a.shape[1], a.shape[2]), np.uint8)
    _rows_pass(np.ascontiguousarray(a).reshape(a.shape[0], -1), 0, bounds, kk,
               out.reshape(len(bounds), -1))
    return out


def resize(pixels: Pixels | np.ndarray, size: tuple[int, int],
           box: tuple[float, float, float, float] | None = None, kind: int = BOX
           ) -> np.ndarray:
    """(ysize, xsize, c) uint8: `Image.resize(size, filter, box)` of an RGB or L picture's
    pixels ((h, w, c) uint8, or `Pixels` to share their transposition) with filter `kind`
    (BOX, BILINEAR or LANCZOS), without `reducing_gap`.

    As Pillow 13 (_imaging.c `_resize`, Resample.c `ImagingResampleInner`): a box of whole
    pixels the size of the output is a crop; the vertical pass comes first when the height
    shrinks by more than twice as many pixels as the width (then over every column), else
    the horizontal pass first (over the rows the vertical pass reads only).
    """
    px = pixels if isinstance(pixels, Pixels) else Pixels(pixels)
    a = px.array
    h, w = a.shape[:2]
    xsize, ysize = size
    box = (0, 0, w, h) if box is None else box
    b = [np.float32(v) for v in box]
    if (b[0] == int(b[0]) and b[2] - b[0] == xsize and b[1] == int(b[1])
            and b[3] - b[1] == ysize):
        return np.array(a[int(b[1]):int(b[3]), int(b[0]):int(b[2])], copy=True)
    need_h = xsize != w or box[0] != 0 or box[2] != xsize
    need_v = ysize != h or box[1] != 0 or box[3] != ysize
    y0, ylen = _span(box, 1)
    bounds_v, kk_v = _kernel(h, y0, ylen, ysize, kind)
    if h - ysize > 0 and h - ysize > (w - xsize) * 2:  # vertical first
        out = _vertical(a, bounds_v, kk_v) if need_v else a
        if not need_h:
            return np.array(out, copy=True)
        return _horizontal(_turned(out), (0, len(out)), xsize, box, kind)
    if not need_h:
        return _vertical(a, bounds_v, kk_v) if need_v else np.array(a, copy=True)
    first, last = int(bounds_v[0, 0]), int(bounds_v[-1, 0] + bounds_v[-1, 1])
    out = _horizontal(px.turned, (first, last), xsize, box, kind)
    if not need_v:
        return out
    bounds_v = bounds_v.copy()
    bounds_v[:, 0] -= first
    return _vertical(out, bounds_v, kk_v)


def resize_box(pixels: Pixels | np.ndarray, size: tuple[int, int],
               box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """`Image.resize(size, Image.Resampling.BOX, box)`'s pixels (see `resize`)."""
    return resize(pixels, size, box, BOX)


def grey_copy(rgb: Image.Image, side: int, pixels: Pixels | None = None) -> np.ndarray:
    """(side, side) uint8: `rgb.convert("L").resize((side, side), BILINEAR)`'s pixels (the
    hashes' grey copy, npimage.matching.hashing.grey_copy), the resize done here.

    `pixels`: Pixels(np.asarray(rgb)) of an RGB picture when the caller has them: the grey
    picture and its transposition are then converted from them (`Pixels.grey`), without
    Pillow's conversion, a read-out or a transposition of their own."""
    grey = np.asarray(rgb.convert("L")) if pixels is None else pixels.grey()
    return resize(grey, (side, side), kind=BILINEAR)[:, :, 0]


def thumbnail_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The size `Image.thumbnail((side, side))` gives a width x height picture (its own
    rounding of the aspect ratio, which `fit_size` of the report's thumbnails does not share)."""
    if side >= width and side >= height:
        return width, height
    aspect = width / height
    x = y = side
    if x / y >= aspect:
        x = max(min(math.floor(y * aspect), math.ceil(y * aspect),
                    key=lambda n: abs(aspect - n / y)), 1)
    else:
        y = max(min(math.floor(x / aspect), math.ceil(x / aspect),
                    key=lambda n: 0 if n == 0 else abs(aspect - x / n)), 1)
    return x, y


def plain_thumbnail(rgb: Image.Image, size: tuple[int, int]) -> bool:
    """Is `thumbnail` of `rgb` to `size` one resize of an RGB picture, which this module
    stands for? (Not when it shrinks by 2 x REDUCING_GAP or more: Pillow's `reduce` first.)"""
    return (rgb.mode == "RGB" and int(rgb.width / size[0] / REDUCING_GAP) <= 1
            and int(rgb.height / size[1] / REDUCING_GAP) <= 1)


def fit_lanczos(img: Image.Image, side: int) -> Image.Image:
    """`img` fitted into a (side, side) square as `img.thumbnail((side, side), LANCZOS,
    reducing_gap=2.0)` makes it, to the byte, as a new picture (`img` itself when it fits
    already; it is never changed).

    An RGB picture that Pillow would resample in one step (shrunk less than 2 x
    REDUCING_GAP times: every JPEG after its draft decode) is resized here; any other
    (another mode, or an integer `reduce` first) goes through Pillow's own thumbnail.
    The picture must be loaded and not a JPEG awaiting its draft (decode's are)."""
    size = thumbnail_size(img.width, img.height, side)
    if size == img.size:
        return img
    if not plain_thumbnail(img, size):
        out = img.copy()
        out.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
        return out
    return Image.fromarray(resize(np.asarray(img), size, kind=LANCZOS))
