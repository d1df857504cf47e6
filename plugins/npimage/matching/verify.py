"""Verification of close pairs: look at the detail the hashes and the global FV cannot see.

Why: two strengths of one pack template ("0.9 %" and "250 ml") have identical 64-bit
hashes and FV cosines of 0.997, so compare calls them the same image. This stage takes
the pairs compare scored high, compares a small aligned picture of each image region by
region, and moves a pair down the bands when one region differs (another strength,
barcode, name or accent colour), or up to `retouched` when the only difference is
geometric (crop, rotation, mirror, margins) that the hashes punish.

The local-detail signature (`npimage.matching.detail`, stored with the other signatures):
a DETAIL_SIDE x DETAIL_SIDE grey thumbnail (luma) and a CHROMA_SIDE x CHROMA_SIDE thumbnail
of the two chroma channels, uint8, squashed to a square like the hashes: 128*128 + 2*32*32
= 18 432 bytes raw per image (less in Parquet).

Per pair (`verify`):
1. photometric normalisation (each thumbnail to zero mean, unit deviation: tone changes
   vanish), then at identity and mirrored, vectorised over the batch: the difference map,
   smoothed over a window the size of a printed word, and its peak = `peak`;
2. the pairs that are not clean at identity are aligned one by one (OpenCV ECC, affine,
   straight or mirrored: at half size first, at full size only when that is not clean),
   then step 1 again on the overlap with a one-pixel tolerance (`_diff`: an edge left up
   to a pixel off by the alignment or the interpolation is not a difference);
3. verdict from the residual: clean -> the same picture (kept; lifted to `retouched` when
   the alignment was geometric); one region or a few differ -> a variant (moved below
   0.95, with the kind of region: text, colour, ...); an opaque patch over the picture
   -> a sticker (kept as a retouch).

Every check returns (cap, floor, reason) per pair; further checks on the thumbnails can be
appended to CHECKS without touching this one. What the packs say (the GTINs the reading
stage read from their codes, issue #11) is `gtin_check`, on image ids: two images that
both carry GTINs and share none are capped below 0.95 ("GTIN differs: A vs B"), whatever
the thumbnails say (a barcode's bars are too fine for them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npimage.bands import BANDS
from npimage.matching.detail import (
    CHROMA_SIDE,
    DETAIL_SIDE,
    content_boxes,
    is_current,
    unpack_details,
)

#: Content boxes further apart than this (share of the frame) mean another framing.
BOX_MOVED = 0.03


# -- the visual check ------------------------------------------------------------------------

#: Blur (sigma, thumbnail pixels) applied to both thumbnails before differencing, and the
#: stronger blur tried on either side (a resize or a sharper source changes the fine grain).
BLUR = 0.7
#: Normalised grey levels are clipped to +-CLIP deviations (a star field, a glint).
CLIP = 3.0
BLUR_EQUALISE = (1.3, 2.0)
#: Side of the window (pixels of the 128 thumbnail: about a printed word) the difference is
#: averaged over; its peak is the pair's grey residual.
WINDOW = 2
CHROMA_WINDOW = 2


@dataclass(frozen=True)
class VisualParams:
    """Thresholds of the visual check (fitted on one range of edits, see bench/verify.py)."""

    #: grey residual (units of the pictures' deviation) up to which a pair is the same picture
    grey_clean: float = 0.9
    #: chroma residual (levels of Cb/Cr above the pair's median) up to which colours agree
    chroma_clean: float = 20.0
    #: alignment is tried when the identity residual is above grey_clean over more than this
    #: share of the picture (a misalignment shows along every edge; one changed region
    #: of an aligned pair does not need it)
    align_share: float = 0.0
    #: largest share of the picture a sticker may cover
    sticker_area: float = 0.08
    #: score a variant is capped at (below `retouched`)
    variant_cap: float = 0.93
    #: score a geometric retouch is lifted to (inside `retouched`)
    geometric_floor: float = 0.955
    #: highest score of a retouch: a mirrored pair, a photo whose whole picture shifted
    #: (`global_shift`: a crop, a burst shot a moment apart) and a pair with a sticker are
    #: `retouched`, never `same` (bands: `same` is a copy, recompression or resize)
    retouch_cap: float = 0.985
    #: global shift (`global_shift`, pixels of the detail thumbnail) from which a photo
    #: (no backdrop: its content box is the whole frame) was moved: re-shot or reframed
    shift_moved: float = 0.5


def _norm(g: np.ndarray) -> np.ndarray:
    """Each thumbnail to zero mean and unit deviation (float32): tone changes vanish."""
    g = g.astype(np.float32)
    m = g.mean(axis=(-2, -1), keepdims=True)
    s = g.std(axis=(-2, -1), keepdims=True) + 1.0
    out: np.ndarray = np.clip((g - m) / s, -CLIP, CLIP)  # a few very bright points do not dominate
    return out


def _renorm(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Normalise again over the overlap only (margins brought in by a warp, or cut off,
    would shift the mean and deviation of the whole thumbnail): with n = the overlap's
    size + 1e-6, m = sum(x * valid) / n, sd = sqrt(sum(((x - m) * valid)^2) / n) + 1e-3,
    (x - m) / sd, in float32. One compiled pass per thumbnail (verify_kernels.renorm, the
    same floats as those NumPy statements: sums in NumPy's pairwise order) instead of six
    passes over the stack with a temporary each."""
    from npimage.matching.verify_kernels import renorm

    out: np.ndarray = renorm(np.ascontiguousarray(x, np.float32),
                             np.ascontiguousarray(valid, np.float32))
    return out


def _inside(valid: np.ndarray) -> np.ndarray:
    """The overlap (n, S, S) float32 0/1 at chroma size: 1 where the whole block of grey
    pixels under a chroma pixel is inside (the block's minimum, taken as elementwise
    minima of its rows then of its columns: the same values as a reduction over the
    reshaped blocks, at a fraction of its cost)."""
    k = DETAIL_SIDE // CHROMA_SIDE
    rows = valid[:, 0::k]
    for j in range(1, k):
        rows = np.minimum(rows, valid[:, j::k])
    out = rows[:, :, 0::k]
    for j in range(1, k):
        out = np.minimum(out, rows[:, :, j::k])
    return out


def _box(x: np.ndarray, w: int) -> np.ndarray:
    """Mean over every w x w window of a stack of maps (valid windows only): w*w shifted
    adds (w is 2: cheaper than cumulative sums over the whole stack)."""
    h, wd = x.shape[1] - w + 1, x.shape[2] - w + 1
    out = x[:, :h, :wd].copy()
    for dy in range(w):
        for dx in range(w):
            if dy or dx:
                out += x[:, dy:dy + h, dx:dx + wd]
    out /= w * w
    return out


def _envelope(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) value of each pixel's 3 x 3 neighbourhood in a stack (n, H, W, ...),
    edges replicated; separable, 4 comparisons each."""
    def run(op: Callable[..., np.ndarray]) -> np.ndarray:
        out = y.copy()
        for axis in (1, 2):
            src = out.copy()
            lo = [slice(None)] * y.ndim
            hi = [slice(None)] * y.ndim
            lo[axis], hi[axis] = slice(None, -1), slice(1, None)
            op(out[tuple(lo)], src[tuple(hi)], out=out[tuple(lo)])
            op(out[tuple(hi)], src[tuple(lo)], out=out[tuple(hi)])
        return out
    return run(np.minimum), run(np.maximum)


def _diff(x: np.ndarray, y: np.ndarray, tolerant: bool,
          dist: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Distance map of x and y. `tolerant`: each side's distance to the range of values the
    other takes within one pixel (an edge that an alignment left up to one pixel off costs
    nothing, and any sub-pixel shift is covered), the larger of the two ways (a stroke on one
    side only still counts: nothing near it on the other side has its level)."""
    if not tolerant:
        return dist(x, y)
    (xl, xh), (yl, yh) = _envelope(x), _envelope(y)
    zero = np.zeros((), x.dtype)
    x_to_y = np.maximum(np.maximum(x - yh, yl - x), zero)
    y_to_x = np.maximum(np.maximum(y - xh, xl - y), zero)
    return dist(np.maximum(x_to_y, y_to_x), zero)


def _chroma_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = x - y
    out: np.ndarray = np.sqrt((d * d).sum(axis=-1))
    return out


#: The blurs each side of a pair is tried with: BLUR, then each of BLUR_EQUALISE.
SIGMAS = (BLUR, *BLUR_EQUALISE)


def _blurs(x: np.ndarray) -> np.ndarray:
    """(3, n, S, S) float32: the stack x blurred by each of SIGMAS (OpenCV, per thumbnail,
    written in place)."""
    import cv2

    out = np.empty((len(SIGMAS), *x.shape), np.float32)
    x = np.ascontiguousarray(x, np.float32)
    for k, s in enumerate(SIGMAS):
        for i in range(len(x)):
            cv2.GaussianBlur(x[i], (0, 0), s, dst=out[k, i])
    return out


def _grey_maps(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None, tolerant: bool,
               blurred: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(plain peak, plain windowed map, tolerant peak) of normalised stacks a and b: one
    compiled pass per pair (npimage.matching.verify_kernels.grey_maps). `blurred`: the
    `_blurs` of a's and b's distinct thumbnails and, per pair, the row of each side in
    them (`_distinct_blurs`), when already made (once per image)."""
    from npimage.matching.verify_kernels import grey_maps

    mask = np.zeros((0, *a.shape[1:]), np.float32) if valid is None \
        else np.ascontiguousarray(valid, np.float32)
    if blurred is None:
        rows = np.arange(len(a), dtype=np.int64)
        blurred = (_blurs(a), _blurs(b), rows, rows)
    ba, bb, ra, rb = blurred
    _, peak, gmap, tpeak, _ = grey_maps(ba, bb, ra, rb, mask, tolerant)
    return peak, gmap, tpeak


def grey_residual(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(peak, map) of the windowed grey difference of normalised stacks a and b (n, S, S).

    Both are blurred by BLUR; each side is also tried with BLUR_EQUALISE and the pair keeps
    the combination with the least mean difference (a resized copy has less fine grain).
    `valid` (n, S, S) masks pixels outside the overlap of an alignment.
    """
    peak, gmap, _ = _grey_maps(a, b, valid, False)
    return peak, gmap


def grey_residuals(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(tolerant peak, plain map), for aligned pairs: the blur combination is chosen on the
    plain difference, then the chosen one is also compared forgiving a one-pixel
    misregistration (`_diff`); the plain map says where the pair differs (see `_align`)."""
    _, gmap, tpeak = _grey_maps(a, b, valid, True)
    return tpeak, gmap


def chroma_residual(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None,
                    tolerant: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(peak, map) of the windowed chroma distance above the pair's median (a global cast
    from a tone change or white balance is not a local colour change). `valid` (n, S, S)
    masks, at the grey thumbnail's size, what lies outside the overlap of an alignment;
    `tolerant` forgives a one-pixel misregistration (`_diff`)."""
    d = _diff(a.astype(np.float32), b.astype(np.float32), tolerant, _chroma_dist)
    if valid is not None:
        d *= _inside(valid)
    d = d - np.median(d.reshape(len(d), -1), axis=1)[:, None, None]
    m = _box(d, CHROMA_WINDOW)
    # a grey picture (a grey-level copy, a 1-bit mode) has no colour to compare
    grey = _colourless(a) | _colourless(b)
    m[grey] = 0.0
    return m.max(axis=(1, 2)), m


def chroma_residuals(a: np.ndarray, b: np.ndarray, valid: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(tolerant peak, plain map) of `chroma_residual`, for aligned pairs: the conversions,
    the overlap at chroma size and the colourless test made once for both."""
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    inside = _inside(valid)
    grey = _colourless(a) | _colourless(b)
    out = []
    for tolerant in (True, False):
        d = _diff(fa, fb, tolerant, _chroma_dist) * inside
        d = d - np.median(d.reshape(len(d), -1), axis=1)[:, None, None]
        m = _box(d, CHROMA_WINDOW)
        m[grey] = 0.0
        out.append(m)
    return out[0].max(axis=(1, 2)), out[1]


def _colourless(c: np.ndarray) -> np.ndarray:
    """Per thumbnail: no pixel more than 3 levels from neutral chroma (a grey picture)."""
    out: np.ndarray = np.abs(c.astype(np.int16) - 128).max(axis=(1, 2, 3)) <= 3
    return out


#: ECC stopping criteria (iterations, epsilon) of the coarse pass (half size, smoothed) and
#: of the fine pass (full size), which runs only for pairs the coarse one left unclean. The
#: fine pass starts from the coarse warp and only refines it: 10 iterations to a 1e-3 step
#: give the same verdicts as 30 to 1e-4 on demo seed 1 and the photo edits, and cap three
#: more variants on seed 0, for ~20 % less CPU; the coarse pass to a 1e-3 step in at most
#: 30 iterations (instead of 60 to 1e-4) changes no verdict on either seed or the photos
#: and saves as much again (docs/BENCHMARKS.md).
ECC_COARSE = (30, 1e-3)
ECC_FINE = (10, 1e-3)
#: A pair that can only be lifted (below LIFT_BELOW: a cap cannot move it across a band)
#: skips the fine pass when the coarse pass leaves it unclean
#: with more than this share of its windows above grey_clean: the fine pass only refines
#: the coarse warp by a fraction of a pixel, and such a pair is another picture ("several
#: regions differ" starts at 0.12 too). Lifted pairs reach at most 0.07 after the coarse
#: pass (photo edits: margins; demo seeds 0 and 1 and a grocery run: 0.015); different
#: grocery photos with FV cosine >= 0.85 are above it 9 times in 10 (docs/BENCHMARKS.md).
LIFT_SPREAD = 0.12


def _small(x: np.ndarray) -> np.ndarray:
    """A thumbnail smoothed and halved: what the coarse ECC pass aligns."""
    import cv2

    size = (x.shape[1] // 2, x.shape[0] // 2)
    out: np.ndarray = cv2.resize(cv2.GaussianBlur(x, (0, 0), 1.0), size,
                                 interpolation=cv2.INTER_AREA)
    return out


def _ecc(a: np.ndarray, b: np.ndarray, warp: np.ndarray | None = None,
         small: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray | None:
    """Affine warp (2x3, float32, full-size frame) taking b onto a by ECC; None if it fails.

    Without `warp`: the coarse pass, at half size and smoothed (`_small`, or `small`: both
    already made, once per image), from identity (converges over crops, turns and margins,
    and costs a quarter). With `warp` (a coarse result): the fine pass at full size, barely
    smoothed (the smoothing biases the scale by ~0.5 %, which leaves every edge of the
    picture a fraction of a pixel off)."""
    import cv2

    crit = cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT
    try:
        if warp is None:
            sa, sb = small if small is not None else (_small(a), _small(b))
            _, out = cv2.findTransformECC(  # type: ignore[call-overload]  # stubs: mask None
                sa, sb, np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE,
                (crit, *ECC_COARSE), None, 5)
            out[:, 2] *= 2
        else:
            _, out = cv2.findTransformECC(  # type: ignore[call-overload]  # stubs: mask None
                a, b, warp.copy(), cv2.MOTION_AFFINE, (crit, *ECC_FINE), None, 3)
    except cv2.error:
        return None
    result: np.ndarray = out
    return result


def _warped(img: np.ndarray, warp: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """img warped onto the reference frame (warp found at `scale` times this size)."""
    import cv2

    w = warp.copy()
    w[:, 2] *= scale
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out: np.ndarray = cv2.warpAffine(img, w, (img.shape[1], img.shape[0]), flags=flags,
                                     borderMode=cv2.BORDER_REPLICATE)
    return out


def _warp(img: np.ndarray, warp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """img warped onto the reference frame (`_warped`), and the mask of pixels that came
    from inside img (eroded by one pixel)."""
    import cv2

    out = _warped(img, warp)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    size = (img.shape[1], img.shape[0])
    ones = np.ones(img.shape[:2], np.float32)
    valid = cv2.warpAffine(ones, warp, size, flags=flags, borderValue=0.0) > 0.999
    valid = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return out, valid


def _is_geometric(warp: np.ndarray | None, mirrored: bool) -> bool:
    """Did the alignment move the picture by more than resampling jitter?"""
    if mirrored:
        return True
    if warp is None:
        return False
    (a, b, x), (c, d, y) = warp.tolist()  # Python floats: no NumPy call per pair

    def over(values: tuple[float, ...], limit: float) -> bool:  # np.max(...) > limit
        return not any(v != v for v in values) and max(values) > limit  # NaN: False

    return over((abs(a - 1.0), abs(b), abs(c), abs(d - 1.0)), 0.01) or over(
        (abs(x), abs(y)), 0.75)


@dataclass
class VisualResult:
    """Per pair: residuals after the best alignment, and how the pair was aligned."""

    grey: np.ndarray  # float32, grey residual peak
    chroma: np.ndarray  # float32, chroma residual peak
    mirrored: np.ndarray  # bool
    geometric: np.ndarray  # bool: aligned by a real transform (crop, rotation, margins)
    aligned: np.ndarray  # bool: ECC was run
    grey_map: np.ndarray  # (n, S-W+1, S-W+1) windowed grey difference
    chroma_map: np.ndarray
    a: np.ndarray = field(repr=False)  # normalised grey of a (n, S, S)
    b: np.ndarray = field(repr=False)  # normalised grey of b in a's frame
    ca: np.ndarray = field(repr=False)
    cb: np.ndarray = field(repr=False)
    warp: np.ndarray = field(repr=False)  # (n, 2, 3) float32: b onto a (after mirroring),
    # the last ECC pass's (fine, else coarse; identity when not aligned), used or not
    moved: np.ndarray | None = None  # bool: mirrored, or a photo shifted (`global_shift`)


@dataclass
class _Aligned:
    """Pairs aligned by one ECC pass: b (grey, chroma) warped onto a, overlap, warps."""

    a: np.ndarray
    b: np.ndarray
    cb: np.ndarray
    valid: np.ndarray
    moved: np.ndarray
    warps: list[np.ndarray | None]
    grey: np.ndarray = field(init=False)
    gmap: np.ndarray = field(init=False)
    chroma: np.ndarray = field(init=False)
    cmap: np.ndarray = field(init=False)


def _align(a: np.ndarray, b: np.ndarray, ca: np.ndarray, cb: np.ndarray,
           start: Sequence[np.ndarray | None] | None,
           small: tuple[np.ndarray, np.ndarray] | None = None,
           grey_clean: float | None = None) -> _Aligned:
    """One ECC pass over pairs (coarse when `start` is None, else fine from those warps),
    then their residuals on the overlap, forgiving one pixel of misregistration. `small`:
    the coarse pass's smoothed half-size stacks of a and b (`_small`), made per image.
    `grey_clean`: the chroma residual only of the pairs whose grey residual is at most
    that (`_lazy_chroma`), and b's chroma warped only for those and for the pairs whose
    grey map may be one region (at most ONE_REGION of it above `grey_clean`: the region
    tests read the warped chroma); the others keep b's chroma as it was (read by
    nothing: should this pass be their best, they are SEVERAL)."""
    n = len(a)
    wb, wc = b.copy(), cb.astype(np.float32)
    valid = np.ones(a.shape, np.float32)
    moved = np.zeros(n, bool)
    warps: list[np.ndarray | None] = []
    for j in range(n):
        w0 = None if start is None else start[j]
        pair = None if small is None else (small[0][j], small[1][j])
        warp = _ecc(a[j], b[j], w0, pair) if start is None or w0 is not None else None
        warps.append(warp if warp is not None else w0)
        if warps[-1] is None:
            continue
        wb[j], valid[j] = _warp(b[j], warps[-1])
        moved[j] = _is_geometric(warps[-1], False)
    out = _Aligned(_renorm(a, valid), _renorm(wb, valid), wc, valid, moved, warps)
    # the tolerant peaks say whether the pair is clean; the plain maps say where it differs
    # (one pixel of tolerance thins changed strokes, and a thinned text change can pass
    # for a flat patch in the region tests)
    out.grey, out.gmap = grey_residuals(out.a, out.b, valid)
    read = np.ones(n, bool) if grey_clean is None else (
        (out.grey <= grey_clean) | ((out.gmap > grey_clean).mean(axis=(1, 2)) <= ONE_REGION))
    for k in np.flatnonzero(read).tolist():
        found = warps[k]
        if found is not None:
            wc[k] = _warped(cb[k].astype(np.float32), found, CHROMA_SIDE / DETAIL_SIDE)
    out.chroma, out.cmap = _lazy_chroma(
        lambda k: chroma_residuals(ca[k], wc[k], valid[k]), out.grey, grey_clean, ca.shape)
    return out


def _lazy_chroma(residual: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 grey: np.ndarray, grey_clean: float | None, shape: tuple[int, ...]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(peak, map) of a chroma residual (`residual`, of the rows given), only for the pairs
    whose grey residual is at most `grey_clean` (all when None); the others get an infinite
    peak and a zero map.

    Why: a pair is clean only when both residuals are, and the chroma residual is read
    nowhere else for a pair whose grey one is not clean (the alignment passes compare grey
    residuals; the region tests read the grey map; the second look's colour region is for
    pairs whose grey map is clean, and it compares afresh). Different photos of similar
    produce, most of the pairs FV sends, are unclean in grey at every step. The chroma
    residual is per pair, so the rows computed have the values the whole stack would give:
    the verdicts do not change."""
    if grey_clean is None:
        return residual(np.arange(len(grey)))
    keep = np.flatnonzero(grey <= grey_clean)
    peak = np.full(len(grey), np.inf, np.float32)
    cmap = np.zeros((len(grey), shape[1] - CHROMA_WINDOW + 1, shape[2] - CHROMA_WINDOW + 1),
                    np.float32)
    if len(keep):
        peak[keep], cmap[keep] = residual(keep)
    return peak, cmap


def _images(x: np.ndarray) -> np.ndarray:
    """Per thumbnail of a stack, the index of its first identical copy in the stack: the
    pairs of a run share images (each image is in ~11 pairs on the demo), and the work done
    on one side of a pair alone (normalisation, blurs, coarse copies) is done once per image."""
    seen: dict[bytes, int] = {}
    return np.array([seen.setdefault(t.tobytes(), i) for i, t in enumerate(x)], np.int64)


def _per_image(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, image: np.ndarray
               ) -> np.ndarray:
    """fn (a function of each thumbnail alone, on a stack) of x, computed on one thumbnail
    per distinct key in `image` (see `_images`) and spread to every row."""
    _, first, where = np.unique(image, return_index=True, return_inverse=True)
    return np.take(fn(x[first]), where, axis=0)


def _distinct_blurs(x: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`_blurs` of one thumbnail per distinct key in `image`, each row's index in it): the
    blurred stacks are not spread to every pair (3 x 512 thumbnails: 100 MB copied)."""
    _, first, where = np.unique(image, return_index=True, return_inverse=True)
    return _blurs(x[first]), where.astype(np.int64)


def _smalls(x: np.ndarray) -> np.ndarray:
    """`_small` of each thumbnail of a stack."""
    return np.stack([_small(t) for t in x]) if len(x) else x[:, ::2, ::2]


def _mirrored(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairs of normalised stacks closer mirrored than straight: mean |a - b mirrored| <
    0.75 x mean |a - b| (float32 means, as NumPy's: verify_kernels.mean_abs_diffs, one
    pass per pair without the stack-sized temporaries)."""
    from npimage.matching.verify_kernels import mean_abs_diffs

    flipped, straight = mean_abs_diffs(np.ascontiguousarray(a, np.float32),
                                       np.ascontiguousarray(b, np.float32))
    out: np.ndarray = flipped < 0.75 * straight
    return out


def compare_details(ga: np.ndarray, ca: np.ndarray, gb: np.ndarray, cb: np.ndarray,
                    params: VisualParams, lift_only: np.ndarray | None = None,
                    full_frame: np.ndarray | None = None, lazy: bool = False) -> VisualResult:
    """Residuals of pairs of detail thumbnails, aligning (straight or mirrored) those that
    differ at identity: a coarse ECC pass first, the fine pass only for pairs it leaves
    unclean (and, of the `lift_only` pairs, only those it leaves nearly clean: LIFT_SPREAD).
    `full_frame`: pairs of photos (no backdrop on either side), whose clean pairs are also
    told moved when the whole picture shifted (`global_shift`). `lazy`: the chroma residual
    only where the grey one is clean (`_lazy_chroma`), and b's chroma warped only where
    something reads it (`_align`): the same verdicts under `params` (`visual_check`), but
    `chroma` is inf elsewhere, so not for judging under other thresholds (bench/verify.py's
    fit leaves it off).
    Vectorised over pairs except the per-pair ECC."""
    ia, ib = _images(ga), _images(gb)
    a, b = _per_image(_norm, ga, ia), _per_image(_norm, gb, ib)
    mirrored = _mirrored(a, b)
    b = np.where(mirrored[:, None, None], b[:, :, ::-1], b)
    cb = np.where(mirrored[:, None, None, None], cb[:, :, ::-1], cb)
    ib = 2 * ib + mirrored  # b's side: one image, straight or mirrored
    ba, ra = _distinct_blurs(a, ia)
    bb, rb = _distinct_blurs(b, ib)
    grey, gmap, _ = _grey_maps(a, b, None, False, (ba, bb, ra, rb))
    del ba, bb
    grey_clean = params.grey_clean if lazy else None
    chroma, cmap = _lazy_chroma(lambda k: chroma_residual(ca[k], cb[k]), grey, grey_clean,
                                ca.shape)
    n = len(a)
    geometric, aligned = mirrored.copy(), np.zeros(n, bool)
    warp = np.tile(np.eye(2, 3, dtype=np.float32), (n, 1, 1))
    spread = (gmap > params.grey_clean).mean(axis=(1, 2))
    todo = np.flatnonzero((grey > params.grey_clean) & (spread > params.align_share))
    if len(todo):
        aligned[todo] = True
        small = (_per_image(_smalls, a[todo], ia[todo]), _per_image(_smalls, b[todo], ib[todo]))
        coarse = _align(a[todo], b[todo], ca[todo], cb[todo], None, small, grey_clean)
        passes = [(todo, coarse)]
        unclean = (coarse.grey > params.grey_clean) | (coarse.chroma > params.chroma_clean)
        if lift_only is not None:  # another picture: no alignment will make it clean
            far = (coarse.gmap > params.grey_clean).mean(axis=(1, 2)) > LIFT_SPREAD
            unclean &= ~(lift_only[todo] & far)
        again = np.flatnonzero(unclean)
        if len(again):
            passes.append((todo[again], _align(a[todo[again]], b[todo[again]], ca[todo[again]],
                                               cb[todo[again]], [coarse.warps[j] for j in again],
                                               None, grey_clean)))
        for idx, al in passes:  # each pass replaces what it improves
            better = al.grey < grey[idx]
            sel = idx[better]
            grey[sel], gmap[sel], chroma[sel], cmap[sel] = (
                al.grey[better], al.gmap[better], al.chroma[better], al.cmap[better])
            a[sel], b[sel], cb[sel] = al.a[better], al.b[better], al.cb[better]
            geometric[sel] = mirrored[sel] | al.moved[better]
            for i, found in zip(idx, al.warps, strict=True):  # the finest warp found
                if found is not None:  # (None: ECC failed from identity)
                    warp[i] = found
    moved = mirrored.copy()
    if full_frame is not None:  # photos: a shift of the whole picture is a reframing
        still = np.flatnonzero(full_frame & ~mirrored & (grey <= params.grey_clean)
                               & (chroma <= params.chroma_clean))
        moved[still] = global_shift(ga[still], gb[still]) > params.shift_moved
    return VisualResult(grey, chroma, mirrored, geometric, aligned, gmap, cmap, a, b, ca, cb,
                        warp, moved)


def global_shift(ga: np.ndarray, gb: np.ndarray) -> np.ndarray:
    """Length (pixels of the detail thumbnail, sub-pixel) of the translation between the two
    grey thumbnails of each pair, by phase correlation (vectorised FFTs over the stack).

    Why: a re-shot photo (a burst a moment later, the camera moved ~1 % of the frame) aligns
    clean within the one-pixel tolerance of the residual, so the residual alone calls it the
    same picture; the phase correlation peak finds its shift to a tenth of a pixel, where
    the same image recompressed, resized, re-saved, toned or sharpened stays under 0.25 px
    (bench/verify.py, photos table)."""
    n = len(ga)
    if n == 0:
        return np.zeros(0, np.float32)
    side = ga.shape[-1]
    win = np.outer(*2 * [np.hanning(side)]).astype(np.float32)
    fa = np.fft.rfft2((_norm(ga) * win).astype(np.float32))
    fb = np.fft.rfft2((_norm(gb) * win).astype(np.float32))
    cross = fa * np.conj(fb)
    corr = np.fft.irfft2(cross / (np.abs(cross) + 1e-9), s=(side, side))
    peak = corr.reshape(n, -1).argmax(axis=1)
    py, px = np.divmod(peak, side)
    offs = np.arange(-1, 2)
    ys = (py[:, None] + offs) % side
    xs = (px[:, None] + offs) % side
    hood = np.maximum(corr[np.arange(n)[:, None, None], ys[:, :, None], xs[:, None, :]], 0)
    total = hood.sum(axis=(1, 2)) + 1e-12
    dy = (hood.sum(axis=2) * offs).sum(axis=1) / total
    dx = (hood.sum(axis=1) * offs).sum(axis=1) / total
    wrap = side // 2
    sy = (py + wrap) % side - wrap + dy
    sx = (px + wrap) % side - wrap + dx
    out: np.ndarray = np.hypot(sx, sy).astype(np.float32)
    return out



# -- verdicts ----------------------------------------------------------------------------------

#: Reasons a check gives (stored in verify_reason; the report shows them on the match card).
SAME_DETAIL = "detail identical"
GEOMETRIC = "same picture after alignment (crop, rotation or margins)"
MIRROR = "mirror image"
SHIFTED = "the picture moved (re-shot or reframed)"
STICKER = "a patch covers one area (sticker)"
TEXT = "one region differs (text)"
CODE = "one region differs (barcode)"
COLOUR = "colour differs in a small area"
SEVERAL = "several regions differ"
#: Share of the thumbnail a changed area may cover and still be "one region".
ONE_REGION = 0.12
#: Sticker test: a pixel is "flat" within FLAT (units of deviation) of its patch's median;
#: a sticker side is flat over STICKER_FLAT of the patch and moves the median by LEVEL_CHANGE.
FLAT = 0.25
STICKER_FLAT = 0.5
LEVEL_CHANGE = 0.5
#: ... or is a saturated colour (chroma distance from grey, levels) over a neutral area.
STICKER_SATURATION = 35.0
#: ... or has this many times the other side's edges (its outline and print).
STICKER_EDGES = 1.5
#: ... and its level stands out by this much (units of deviation) from a ring of RING
#: pixels around it, more than the other side's does.
STANDS_OUT = 0.4
RING = 3
NEUTRAL = 15.0


@dataclass(frozen=True)
class CheckResult:
    """What one check says of each pair: the highest score it allows (1 = no cap), the
    lowest it vouches for (0 = none), and why ("" when it has nothing to say)."""

    cap: np.ndarray
    floor: np.ndarray
    reason: np.ndarray  # object (str)


def _region_kind(r: VisualResult, i: int, params: VisualParams) -> tuple[str, bool]:
    """(reason, sticker?) of a pair whose residual is not clean: the changed areas (connected
    windows above the clean level), each judged: a sticker is forgiven, anything else is a
    variant, named by the kind of area (text, barcode, colour).

    A small area (up to `sticker_area` of the thumbnail) is a sticker when one side of it
    looks like a label stuck over the other: a flat fill of another level covering it,
    carrying edges (its text, its outline) the other side does not have, or hiding the
    other side's detail (a changed accent stripe, flat on both sides with the same edges,
    or changed text on the same background level is not); or an object pasted on the
    picture: far more edges than the other side, and either a wide label over busy detail
    or a level that stands out from the ring of pixels around the area where the other
    side's does not (changed text on a label keeps the label's level inside and around);
    or a saturated colour (a yellow or red label) where the other side is neutral (a white
    label, a grey backdrop). One or two areas that are all stickers: a sticker; one or two
    that are not: the first of them, a barcode when its steps run across more than 3 times
    as much as down, else text; more: several regions. The statistics are one compiled
    call per pair (verify_kernels.region_kind: medians, flat shares and edge sums equal to
    NumPy's bit for bit; tests/test_verify.py holds their NumPy statement), which stops at
    the third area that is not a sticker."""
    import cv2

    from npimage.matching.verify_kernels import KIND_SEVERAL, KIND_STICKER, KIND_TEXT, region_kind

    grey_bad = (r.grey_map[i] > params.grey_clean).astype(np.uint8)
    if not grey_bad.any():
        return COLOUR, False
    if grey_bad.mean() > ONE_REGION:
        return SEVERAL, False
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        cv2.dilate(grey_bad, np.ones((5, 5), np.uint8)), connectivity=8)

    def kind_of(areas: np.ndarray) -> int:
        out: int = region_kind(r.a[i], r.b[i], r.ca[i], r.cb[i], areas,
                               params.sticker_area * r.a[i].size, WINDOW,
                               CHROMA_SIDE / DETAIL_SIDE, FLAT, STICKER_FLAT, LEVEL_CHANGE,
                               STICKER_EDGES, STANDS_OUT, RING, STICKER_SATURATION, NEUTRAL)
        return out

    kind = kind_of(stats[1:])
    if kind == KIND_SEVERAL and grey_bad.mean() <= REGION_AREA:
        # a label beside alignment seams (a strong outline left a fraction of a pixel off,
        # e.g. when a sticker on the margin moved the content box): one area, judged as
        # one region; the 128 px tests alone do not forgive it, the second look may. Two
        # areas besides seams stay several (look-alike packs differing in two places).
        real = region_areas(r, i, params, (labels, stats), seams=True)
        if real is not None and len(real) == 1:
            kind = kind_of(real)
            if kind == KIND_STICKER:
                kind = KIND_TEXT
    return _KINDS[kind], kind == KIND_STICKER


#: Reasons by verify_kernels.region_kind's answer (KIND_STICKER, KIND_TEXT, KIND_CODE,
#: KIND_SEVERAL).
_KINDS = (STICKER, TEXT, CODE, SEVERAL)

#: The changed components (128 px grid) of one region must fit in a box of this share of
#: the frame (the second look cuts it out; a price sticker is a few per cent).
REGION_AREA = 0.08
#: A changed component (dilated, detail grid) of at most this many pixels, beside a larger
#: one, is a speck (one to four windows just above the clean level: JPEG noise, a grain
#: edge); specks are left out of the region (the sticker's outline and print are one
#: cluster, a speck elsewhere is not part of it).
SPECK = 40


def tolerant_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The windowed difference of two normalised, aligned grey thumbnails forgiving one pixel
    of misregistration (`_diff`: each side's distance to the range the other takes within
    one pixel, the larger), with the blur combination the residual picks (the least mean
    difference): where the pair differs even when an edge may be a pixel off. The residual
    kernel's own map (verify_kernels.grey_maps, unmasked), on `_blurs` of the pair."""
    from npimage.matching.verify_kernels import grey_maps

    rows = np.zeros(1, np.int64)
    none = np.zeros((0, *a.shape), np.float32)
    *_, tmap = grey_maps(_blurs(a[None]), _blurs(b[None]), rows, rows, none, True, True)
    out: np.ndarray = tmap[0]
    return out


def region_areas(r: VisualResult, i: int, params: VisualParams,
                 components: tuple[np.ndarray, np.ndarray] | None = None, seams: bool = False
                 ) -> np.ndarray | None:
    """The changed areas (rows x, y, w, h, area of cv2.connectedComponentsWithStats over the
    windows above the clean level, dilated 5 x 5) of one region of an unclean pair, or None
    when they are not one region: specks beside a larger area left out (SPECK), and with
    `seams` the areas where the pair does not differ once either side may move by one pixel
    (`tolerant_map`: an alignment seam along a strong outline, not a change); what is left
    must be one or two areas in a box of at most REGION_AREA of the frame.
    `components`: (labels, stats) of that map when already made."""
    import cv2

    bad = (r.grey_map[i] > params.grey_clean).astype(np.uint8)
    if components is None:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(
            cv2.dilate(bad, np.ones((5, 5), np.uint8)), connectivity=8)
    else:
        labels, stats = components
    keep = np.ones(len(stats) - 1, bool)
    if seams:
        tol = tolerant_map(r.a[i], r.b[i]) > params.grey_clean
        keep = np.bincount(labels[(bad > 0) & tol], minlength=len(stats))[1:] > 0
    return one_region(stats[1:][keep])


def one_region(areas: np.ndarray) -> np.ndarray | None:
    """The changed areas (connected-component stats on the detail grid) that make one region:
    specks beside a larger area left out (SPECK), then one or two areas in a box of at most
    REGION_AREA of the frame; else None."""
    big = areas[areas[:, 4] > SPECK]
    if len(big):
        areas = big
    if len(areas) < 1 or len(areas) > 2:
        return None
    x0, y0 = areas[:, 0].min(), areas[:, 1].min()
    x1 = (areas[:, 0] + areas[:, 2]).max() + WINDOW - 1
    y1 = (areas[:, 1] + areas[:, 3]).max() + WINDOW - 1
    if (x1 - x0) * (y1 - y0) > REGION_AREA * DETAIL_SIDE ** 2:
        return None
    return areas


def visual_check(ga: np.ndarray, ca: np.ndarray, gb: np.ndarray, cb: np.ndarray,
                 params: VisualParams | None = None, moved_box: np.ndarray | None = None,
                 lift_only: np.ndarray | None = None, full_frame: np.ndarray | None = None
                 ) -> tuple[CheckResult, VisualResult]:
    """The visual check of pairs of detail thumbnails (see the module docstring).
    `moved_box`: pairs whose content boxes sit differently in their frames (margins);
    `lift_only`: pairs only a floor can change (see LIFT_SPREAD); `full_frame`: pairs of
    photos without a backdrop (`full_frames`)."""
    params = params or VisualParams()
    r = compare_details(ga, ca, gb, cb, params, lift_only, full_frame, lazy=True)
    return verdicts(r, params, moved_box), r


def verdicts(r: VisualResult, params: VisualParams, moved_box: np.ndarray | None = None
             ) -> CheckResult:
    """Cap, floor and reason of compared pairs (cheap: bench/verify.py fits the thresholds
    by calling it on one comparison with many VisualParams)."""
    n = len(r.grey)
    moved_box = np.zeros(n, bool) if moved_box is None else moved_box
    cap, floor = np.ones(n, np.float32), np.zeros(n, np.float32)
    reason = np.full(n, SAME_DETAIL, dtype=object)
    clean = (r.grey <= params.grey_clean) & (r.chroma <= params.chroma_clean)
    lift = clean & (r.geometric | moved_box)  # the same picture reframed: forgiven
    floor[lift] = params.geometric_floor
    moved = r.mirrored if r.moved is None else r.moved
    # a retouch, not the same image (a moved content box alone is not evidence: a strong
    # recompression can move a pack's box on its backdrop by a few per cent)
    cap[clean & moved] = params.retouch_cap
    reason[clean & moved & ~lift] = SHIFTED
    reason[lift] = GEOMETRIC
    reason[clean & r.mirrored] = MIRROR
    differ = np.flatnonzero(~clean)
    cap[differ] = params.variant_cap
    reason[differ], looked = _region_screen(r.grey_map[differ], params)
    for i in differ[looked]:  # one region or a few: a few region statistics each
        why, sticker = _region_kind(r, int(i), params)
        reason[i] = why
        cap[i] = params.retouch_cap if sticker else params.variant_cap
    return CheckResult(cap, floor, reason)


def _region_screen(gmap: np.ndarray, params: VisualParams) -> tuple[np.ndarray, np.ndarray]:
    """(reason, look further?) of unclean pairs from their grey maps, over the stack: the two
    answers `_region_kind` gives first, without a region statistic (no window above the
    clean level: COLOUR; more than ONE_REGION of them: SEVERAL; both variants), else ""
    and True. (The same share as its per-pair mean of a uint8 map: a count over the map's
    size in float64.) Different photos, most of FV's pairs, are SEVERAL here."""
    bad = gmap > params.grey_clean
    share = bad.mean(axis=(1, 2))
    reason = np.full(len(gmap), "", dtype=object)
    none = ~bad.any(axis=(1, 2))
    reason[none] = COLOUR
    several = ~none & (share > ONE_REGION)
    reason[several] = SEVERAL
    return reason, ~(none | several)


#: A check takes the pairs' detail signatures (a side, b side) and says what it can.
Check = Callable[[Sequence[bytes], Sequence[bytes]], CheckResult]


def moved_boxes(details_a: Sequence[bytes], details_b: Sequence[bytes]) -> np.ndarray:
    """Pairs whose content boxes sit differently in their frames (added or cut margins)."""
    shift = np.abs(content_boxes(details_a) - content_boxes(details_b)).max(axis=1)
    out: np.ndarray = shift > BOX_MOVED
    return out


def full_frames(details_a: Sequence[bytes], details_b: Sequence[bytes]) -> np.ndarray:
    """Pairs whose two content boxes are the whole frame (photos, no backdrop): the box
    does not move their thumbnails, so a shift between them is the picture's own. (A pack
    on a backdrop is framed by its box, found on a coarse grid: a copy's thumbnail may
    move by a pixel or two.)"""
    whole = np.array([0, 0, 1, 1], np.float32)
    out: np.ndarray = ((content_boxes(details_a) == whole).all(axis=1)
                       & (content_boxes(details_b) == whole).all(axis=1))
    return out


def visual(details_a: Sequence[bytes], details_b: Sequence[bytes],
           params: VisualParams | None = None, lift_only: np.ndarray | None = None
           ) -> CheckResult:
    """The visual check on stored detail signatures (`lift_only`: see LIFT_SPREAD)."""
    ga, ca = unpack_details(details_a)
    gb, cb = unpack_details(details_b)
    return visual_check(ga, ca, gb, cb, params, moved_boxes(details_a, details_b),
                        lift_only, full_frames(details_a, details_b))[0]


#: The checks run on every verified pair, in order. Another check (codes and text read from
#: the packs) is one more function here; the pair keeps the lowest cap and the first reason
#: of the check that capped it.
CHECKS: list[Check] = [visual]

# -- what the packs say: codes read by the reading stage (issue #11) -------------------------

#: Score a pair is capped at when both pictures carry GTINs and share none (below
#: `retouched`, like a visual variant: another GTIN is another product).
GTIN_CAP = 0.93


def gtin_check(pairs: Any, codes: Any) -> CheckResult:
    """'GTIN differs: A vs B' for the pairs (columns a, b: image ids) whose two images both
    carry GTINs read from their codes (table image_id, gtin) and share none.

    A code's GTIN is only given when its check digit holds (npimage.reading.codes), so a
    read GTIN is evidence; an image without one says nothing (no cap). One DuckDB join over
    the pairs, no loop: the same rule as npimage.reading.compare_packs.
    """
    import duckdb

    n = pairs.num_rows
    cap, floor = np.ones(n, np.float32), np.zeros(n, np.float32)
    reason = np.full(n, "", dtype=object)
    if n == 0 or codes is None or codes.num_rows == 0:
        return CheckResult(cap, floor, reason)
    import pyarrow as pa

    con = duckdb.connect()
    con.register("p", pa.table({"i": pa.array(np.arange(n, dtype=np.int64)),
                                "a": pairs["a"], "b": pairs["b"]}))
    con.register("c", codes.select(["image_id", "gtin"]))
    hits = con.sql(
        """WITH g AS (SELECT DISTINCT image_id, gtin FROM c WHERE gtin IS NOT NULL AND gtin <> ''),
                s AS (SELECT image_id, list_sort(list(gtin)) AS gtins FROM g GROUP BY 1)
           SELECT p.i, array_to_string(sa.gtins, ', ') AS ga, array_to_string(sb.gtins, ', ') AS gb
           FROM p JOIN s sa ON sa.image_id = p.a JOIN s sb ON sb.image_id = p.b
           WHERE len(list_intersect(sa.gtins, sb.gtins)) = 0""").to_arrow_table()
    con.close()
    if hits.num_rows:
        idx = hits["i"].to_numpy()
        cap[idx] = GTIN_CAP
        reason[idx] = [f"GTIN differs: {x} vs {y}" for x, y in
                       zip(hits["ga"].to_pylist(), hits["gb"].to_pylist(), strict=True)]
    return CheckResult(cap, floor, reason)


#: Pairs are verified from this score up (`very_similar` and better: a variant may score
#: 0.90-0.95 when its other strength also moves a hash bit or two), and from this FV cosine
#: up (a mirror or a 10 % crop keeps the FV but not the hashes).
VERIFY_FROM = 0.90
VERIFY_FV_FROM = 0.85


def combine(score: np.ndarray, results: Sequence[CheckResult]) -> tuple[np.ndarray, np.ndarray]:
    """Verified scores and reasons: the score raised to the highest floor and held under the
    lowest cap of any check; a cap below that floor (a check found a difference: a variant,
    another GTIN) wins alone, so a pair another check would lift stays capped."""
    n = len(score)
    cap = np.ones(n, np.float32)
    floor = np.zeros(n, np.float32)
    reason = np.full(n, "", dtype=object)
    for res in results:
        capped = res.cap < cap
        reason[capped] = res.reason[capped]
        cap = np.minimum(cap, res.cap)
        floor = np.maximum(floor, res.floor)
    for res in results:  # reasons of pairs no check capped: the first that said something
        empty = (reason == "") & (res.reason != "")
        reason[empty] = res.reason[empty]
    floor = np.where(floor <= cap, floor, 0)
    out = np.minimum(np.maximum(score, floor), cap)
    return out.astype(np.float32), reason


#: Threads the checks run on (ECC, OpenCV filters, the residual kernel and NumPy's array
#: operations release the GIL, so chunks of pairs run side by side on the machine's cores;
#: chunks bound memory).
THREADS = 2
#: Pairs per chunk. A chunk's stacks are (CHUNK, 128, 128) float32: at 512 pairs each is
#: 32 MiB and a little, just over glibc's largest mmap threshold, so every one was a fresh
#: mmap, its pages faulted in (zeroed) then unmapped: 3.7 GB mapped afresh and 2-4 s of
#: system time per 3 200 grocery pairs, up to a third of the stage's CPU. At 128 pairs
#: (8 MiB) malloc keeps and reuses them (0.4 GB mapped, ~1 s). The verdicts do not depend
#: on the chunk (work per image is shared within a chunk and is the same in any chunk).
#: docs/BENCHMARKS.md, "Session 7: verification's cost with FV".
CHUNK = 128
#: Fewest pairs in a chunk when a small set is split so that every thread gets some
#: (`chunk_size`): below it a chunk's fixed work (its stacks, the NumPy calls per chunk)
#: outweighs what a second core saves.
MIN_CHUNK = 16
#: From this many pairs, with the shipped checks, the chunks run in THREADS processes
#: instead: the small NumPy calls between the OpenCV and compiled ones hold the GIL (~25 % of
#: a demo pair's CPU since the region tests are compiled, ~30-40 % before), so two threads
#: cannot fully use two cores. A process costs ~1-2 s to start (imports), paid back from a
#: few thousand pairs (a nightly verifies ~55 000).
PROCESSES_FROM = 4096


#: Pairs scoring below `retouched` can change band only by being lifted: the lowest cap any
#: check sets (`VisualParams.variant_cap`, `GTIN_CAP`: 0.93) keeps them `very_similar` or
#: leaves them as they are. So the visual check is told they only need a floor (LIFT_SPREAD:
#: another picture skips the fine ECC pass). On the demo most verified pairs are such:
#: look-alike packs of one template at 0.90-0.95.
LIFT_BELOW = next(b.limit for b in BANDS if b.name == "retouched")


def chunk_size(n: int, threads: int, chunk: int = CHUNK) -> int:
    """Pairs per chunk for n pairs on `threads`: `chunk`, or fewer when n pairs would make
    fewer chunks than threads (a hashes-only run of 2 000 photos verifies ~120 pairs: one
    chunk of 128 left a core idle), never below MIN_CHUNK. The verdicts do not depend on it."""
    return max(1, min(chunk, max(MIN_CHUNK, -(-n // max(1, threads)))))


def _chunk(score: np.ndarray, details_a: Sequence[bytes], details_b: Sequence[bytes],
           checks: Sequence[Check]) -> tuple[np.ndarray, np.ndarray]:
    """(verified score, reason) of one chunk of pairs; the visual check is told which pairs
    score below LIFT_BELOW (only a floor can move them across a band: see LIFT_SPREAD)."""
    lift = score < LIFT_BELOW
    return combine(score, [c(details_a, details_b, lift_only=lift) if c is visual
                           else c(details_a, details_b) for c in checks])


@contextmanager
def _one_opencv_thread() -> Iterator[None]:
    """OpenCV's own thread pool set to one thread while the checks run, then restored.

    Why: the checks call OpenCV (ECC, warps, blurs) on 64-128 px thumbnails, thousands of
    times, from THREADS threads or processes that already fill the cores. Each call hands
    its rows to OpenCV's pool, whose workers then wait actively (spinning, sched_yield) for
    the next call: ~10 % more CPU for the same results (OpenCV computes every pixel alike
    on any number of threads; docs/BENCHMARKS.md, session 7). The setting is the process's:
    verify_pairs is not meant to run twice at once in one process."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _shipped_chunk(job: tuple[np.ndarray, list[bytes], list[bytes]]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """`_chunk` with the shipped CHECKS, in a worker process (OpenCV on one thread)."""
    with _one_opencv_thread():
        return _chunk(*job, CHECKS)


def verify_pairs(score: np.ndarray, details_a: Sequence[bytes], details_b: Sequence[bytes],
                 checks: Sequence[Check] | None = None, chunk: int = CHUNK,
                 threads: int | None = None, processes: bool | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Run the checks over pairs (`_chunk`) in chunks of at most `chunk` pairs (`chunk_size`:
    a small set is split between the threads), `threads` chunks at a time (default THREADS,
    at most the machine's cores), in as many processes when `processes` (default: from
    PROCESSES_FROM pairs with the shipped checks), else threads, with OpenCV's own pool at
    one thread (`_one_opencv_thread`); (verified score, reason) per pair, in the pairs'
    order."""
    import multiprocessing as mp
    import os
    from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

    shipped = checks is None
    checks = CHECKS if checks is None else checks
    threads = max(1, min(threads or THREADS, os.cpu_count() or 1))
    chunk = chunk_size(len(score), threads, chunk)
    starts = range(0, len(score), chunk)
    if processes is None:
        processes = shipped and len(score) >= PROCESSES_FROM

    def one(s: int) -> tuple[np.ndarray, np.ndarray]:
        part = slice(s, s + chunk)
        return _chunk(score[part], details_a[part], details_b[part], checks)

    if processes and shipped and threads > 1 and len(starts) > 1:
        pool: Executor
        with ProcessPoolExecutor(threads, mp_context=mp.get_context("spawn")) as pool:
            done = list(pool.map(_shipped_chunk, [
                (score[s:s + chunk], list(details_a[s:s + chunk]), list(details_b[s:s + chunk]))
                for s in starts]))
    else:
        with _one_opencv_thread():
            if threads == 1 or len(starts) < 2:
                done = [one(s) for s in starts]
            else:
                with ThreadPoolExecutor(threads) as pool:
                    done = list(pool.map(one, starts))
    if not done:
        return np.zeros(0, np.float32), np.zeros(0, object)
    return np.concatenate([v for v, _ in done]), np.concatenate([r for _, r in done])


# -- the stage -----------------------------------------------------------------------------------

def _verified_schema() -> Any:
    """What the verify stage writes: one row per direction of every checked pair."""
    import pyarrow as pa

    return pa.schema([("image_id", pa.string()), ("match_image_id", pa.string()),
                      ("score", pa.float32()), ("verify_reason", pa.string())])


def pairs_to_verify(matches: Any) -> Any:
    """Unordered pairs of compare's output that the stage checks: score >= VERIFY_FROM or
    FV cosine >= VERIFY_FV_FROM, not byte-identical. (image_id < match_image_id, best score.)"""
    import duckdb

    con = duckdb.connect()
    con.register("m", matches)
    return con.sql(
        """SELECT least(image_id, match_image_id) AS a, greatest(image_id, match_image_id) AS b,
                  max(score) AS score
           FROM m
           WHERE (score >= $s OR coalesce(dfv, 0) >= $f) AND NOT coalesce(same_bytes, false)
             AND image_id <> match_image_id
           GROUP BY 1, 2 ORDER BY 1, 2""",
        params={"s": VERIFY_FROM, "f": VERIFY_FV_FROM}).to_arrow_table()


def _detail(details: dict[str, bytes | None], image_id: str) -> bytes:
    """The detail signature of an image already checked to have one."""
    found = details[image_id]
    assert found is not None
    return found


def verify_matches(pairs: Any, details: dict[str, bytes | None], codes: Any = None,
                   thumbs: Callable[[list[str]], dict[str, bytes | None]] | None = None) -> Any:
    """The verified rows (both directions) of a pairs_to_verify table, given detail
    signatures by image id. A pair whose image lacks a detail signature is left as it was
    (not verified). `codes` (image_id, gtin: the codes the reading stage read, or None when
    reading is off) adds the GTIN check (`gtin_check`) to the visual CHECKS. `thumbs`
    (image ids -> stored 240 px thumbnails) lets the pairs capped for one region get a
    second look (`npimage.matching.second_look`: a sticker is forgiven)."""
    import pyarrow as pa

    a, b = pairs["a"].to_pylist(), pairs["b"].to_pylist()
    keep = [i for i in range(len(a)) if is_current(details.get(a[i]))
            and is_current(details.get(b[i]))]
    score = pairs["score"].to_numpy(zero_copy_only=False)[keep].astype(np.float32)
    ia, ib = [a[i] for i in keep], [b[i] for i in keep]
    verified, reason = verify_pairs(score, [_detail(details, i) for i in ia],
                                    [_detail(details, i) for i in ib])
    if thumbs is not None:  # a second, sharper look at the pairs capped for one region
        from npimage.matching.second_look import forgive_stickers

        verified, reason = forgive_stickers(score, verified, reason,
                                            [_detail(details, i) for i in ia],
                                            [_detail(details, i) for i in ib], ia, ib, thumbs)
    if codes is not None:  # what the packs say overrides what the thumbnails let through
        packs = gtin_check(pa.table({"a": pa.array(ia, pa.string()),
                                     "b": pa.array(ib, pa.string())}), codes)
        hit = packs.cap < 1  # its reason names the GTINs: it replaces a visual one
        verified[hit] = np.minimum(verified[hit], packs.cap[hit])
        reason[hit] = packs.reason[hit]
    verified = np.round(verified, 6)
    return pa.table({"image_id": ia + ib, "match_image_id": ib + ia,
                     "score": np.concatenate([verified, verified]),
                     "verify_reason": list(reason) + list(reason)}, schema=_verified_schema())
