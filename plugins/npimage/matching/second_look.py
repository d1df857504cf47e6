"""A second, sharper look at the one changed region of a capped pair: was a sticker stuck on?

Why: at 128 px (the detail thumbnail) a price sticker on a ~350 px photo is ~15 x 7 pixels,
and no statistic of the changed area separates it from a changed strength text
(docs/QUALITY.md, issue #12). The signature stage stores a 240 px JPEG thumbnail of every
image (`thumb`); for the few pairs the visual check caps with exactly one small changed
region, this module cuts that region out of the two thumbnails at twice the detail
thumbnail's resolution, aligned by the same ECC warp, and asks whether one side added a
new closed object:

- a sticker: one side has a near-uniform fill (apart from its print), that fill is new
  (the other side differs there), it is a compact closed shape that does not run out of
  the region, its outline is new (along its boundary the other side has no edge), and it
  covers the changed pixels;
- a text or strength variant keeps the shared background (the fill around the strokes is
  the same on both sides, or runs out of the region) and has the other side's strokes
  about its outline (a sticker may match the photo under it in places: where that photo is
  quiet about the outline, a lower share of new pixels is enough);
- a colour (accent) variant keeps the boundary: the other side has an edge along the same
  outline, only the fill changed.

Two cases of the wider test range (bench/verify.py) are looked at differently:

- the 128 px residual may spread where the thumbnails differ in one place only (alignment
  seams along the strong edge of a product on white, whose content box a sticker on the
  margin moved): pairs capped for one region whose region is too spread take the region
  from the look's own changed pixels when they make one or two components in
  a small box (specks left out) and the 128 px residual is no larger than that box;
- a small label whose bold print matches the photo under it has notches bitten out of
  its changed pixels and is not convex: its hull is taken as the object, and every other
  test (new as a whole, the outline new along the hull, across the notches' mouths) is
  made on the hull; a changed glyph's hull is mostly shared background and stays out.

Only when one side passes every test is the pair forgiven (reason STICKER); a wrong
forgive of a variant is worse than a missed sticker. The thresholds were fitted on the
demo generator's sticker range (10-14 % of the width, yellow/red/white rounded rectangles)
on grocery photos of one seed and measured on a wider range (bench/verify.py).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from npimage.matching import verify as V
from npimage.matching.detail import DETAIL_SIDE, content_boxes, unpack_details

#: Side of the second look's picture: the detail thumbnail's frame at twice its size.
LOOK_SIDE = 2 * DETAIL_SIDE
#: Reasons of the pairs that get a second look (one region differs). Pairs capped for
#: several regions are not looked at: on the demo's look-alike packs 60 % of the verified
#: pairs are, 17 % with a change over at most 8 % of the picture, and looking at those
#: would cost the nightly more than its budget (docs/QUALITY.md, "Second look at
#: stickers"). A label beside alignment seams (a sticker on a product's margin leaves
#: seams along its outline) is one region to the visual check (`verify.region_areas`).
LOOKED_AT = (V.TEXT, V.CODE, V.COLOUR)
#: Pixels (second-look grid) added around the changed region.
PAD = 10
#: On the second-look grid (four times the detail grid's pixels), a changed component
#: (dilated) of at most this many pixels beside a larger one is a speck.
LOOK_SPECK = 4 * V.SPECK
#: A pixel differs when its colour is this far (RGB levels, after matching the two sides'
#: tone, with one pixel of tolerance) from every value the other side takes around it.
DIFF = 45.0
#: A pixel belongs to the fill when within this distance (RGB levels) of the fill colour.
FILL = 40.0
#: The object: at least this many pixels (second-look grid), fill over this share of its
#: area (the rest is print), new (differing) over this share of its fill, convex (area over
#: its hull's), covering this share of the changed pixels (its outline included).
MIN_AREA = 40
FILL_SHARE = 0.2
NEW_OBJECT = 0.75
#: ... or new over NEW_QUIET of its area when the other side is quiet around it (its
#: texture makes steps under QUIET levels across the outline moved by SHIFT pixels): a
#: sticker's fill or print may match the photo under it here and there, but a changed text
#: has the other side's strokes about its outline (demo variants: 26-75 levels).
NEW_QUIET = 0.55
QUIET = 20.0
#: Diameter (pixels) of the disk that closes the changed pixels into one object.
CLOSE = 5
#: Width (pixels) of the bands inside and outside the object's boundary, and the window
#: (pixels) over which each side's step across the boundary is measured.
BAND = 2
STEP_WINDOW = 5
#: ... and a step under this (RGB levels), or under TEXTURE_RATIO times the step across
#: the boundary's shape moved by SHIFT pixels (the texture's own steps), is no edge.
STEP_MIN = 30.0
TEXTURE_RATIO = 2.0
SHIFT = 4
SOLIDITY = 0.8
COVERS = 0.85
#: Along its boundary, the sticker side has an edge (a range of EDGE_MIN levels near the
#: boundary) where the other side makes no step, at this share of the boundary at least.
EDGE_MIN = 60.0
NEW_OUTLINE = 0.6


def look_picture(thumb: bytes, detail: bytes) -> np.ndarray:
    """The content box of a stored thumbnail squashed to LOOK_SIDE^2 (RGB float32): the
    detail thumbnail's frame at twice its resolution."""
    from PIL import Image

    with Image.open(io.BytesIO(thumb)) as im:
        rgb = im.convert("RGB")
    x0, y0, x1, y1 = (float(v) for v in content_boxes([detail])[0]
                      * np.array([rgb.width, rgb.height] * 2, np.float32))
    out = rgb.resize((LOOK_SIDE, LOOK_SIDE), Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))
    return np.asarray(out, np.float32)


def changed_region(r: V.VisualResult, i: int, params: V.VisualParams
                   ) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) on the detail grid of the pair's changed region (`verify.region_areas`:
    specks and alignment seams left out, at most two areas in a small box); else None
    (several regions, or too spread: the look finds the region itself, `look_region`)."""
    import cv2

    if (r.grey_map[i] > params.grey_clean).any():
        areas = V.region_areas(r, i, params, seams=True)
    else:  # colour only: where the chroma differs
        k = DETAIL_SIDE // r.chroma_map.shape[1]
        bad = np.kron((r.chroma_map[i] > params.chroma_clean).astype(np.uint8),
                      np.ones((k, k), np.uint8))
        _, _, stats, _ = cv2.connectedComponentsWithStats(
            cv2.dilate(bad, np.ones((5, 5), np.uint8)), connectivity=8)
        areas = V.one_region(stats[1:])
    if areas is None:
        return None
    x0, y0 = areas[:, 0].min(), areas[:, 1].min()
    x1 = (areas[:, 0] + areas[:, 2]).max() + V.WINDOW - 1
    y1 = (areas[:, 1] + areas[:, 3]).max() + V.WINDOW - 1
    return int(x0), int(y0), int(x1), int(y1)


def look_region(changed: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) on the second-look grid of the changed pixels of the whole frame,
    specks left out, when they are few (at most two components) and fit in a small box;
    else None. The region as the sharper look sees it, for pairs whose 128 px residual
    spreads (an alignment seam along a strong edge, a content box that a sticker on the
    margin moved) where the 240 px thumbnails differ in one place only."""
    import cv2

    _, _, stats, _ = cv2.connectedComponentsWithStats(
        cv2.dilate(changed.astype(np.uint8), np.ones((5, 5), np.uint8)), connectivity=8)
    stats = stats[1:]
    big = stats[stats[:, 4] > LOOK_SPECK]
    if len(big) < 1 or len(big) > 2:
        return None
    x0, y0 = big[:, 0].min(), big[:, 1].min()
    x1, y1 = (big[:, 0] + big[:, 2]).max(), (big[:, 1] + big[:, 3]).max()
    if (x1 - x0) * (y1 - y0) > V.REGION_AREA * LOOK_SIDE ** 2:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def _tone_matched(x: np.ndarray, y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """y with each channel's mean and deviation matched to x's over the valid overlap
    (a tone retouch is not a change)."""
    xs, ys = x[valid], y[valid]
    out: np.ndarray = (y - ys.mean(0)) / (ys.std(0) + 1.0) * xs.std(0) + xs.mean(0)
    return out.astype(np.float32)


def _local_range(x: np.ndarray) -> np.ndarray:
    """Per pixel, the largest range of a channel over its STEP_WINDOW square (an edge or
    a line near it)."""
    import cv2

    k = np.ones((STEP_WINDOW, STEP_WINDOW), np.uint8)
    out: np.ndarray = (cv2.dilate(x, k) - cv2.erode(x, k)).max(axis=-1)
    return out


def _commonest_colour(pix: np.ndarray, sample: int = 256) -> np.ndarray:
    """The colour most pixels of `pix` (n, 3) lie near (within FILL / 2 of a sampled
    pixel, the mean of those): the fill of a label under its print."""
    pick = pix[np.linspace(0, len(pix) - 1, min(sample, len(pix))).astype(np.int64)]
    d = np.sqrt(((pick[:, None, :] - pick[None, :, :]) ** 2).sum(axis=-1))
    close = d <= FILL / 2
    out: np.ndarray = pick[close[close.sum(axis=1).argmax()]].mean(axis=0)
    return out


def _step(x: np.ndarray, inner: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """Per pixel, the colour distance between the mean of x over the inner band and over
    the outer band within a STEP_WINDOW square around it: the step x makes across the
    boundary there (a photo continuing under a sticker makes none)."""
    import cv2

    k = (STEP_WINDOW, STEP_WINDOW)

    def mean(band: np.ndarray) -> np.ndarray:
        w = cv2.boxFilter(band.astype(np.float32), -1, k, normalize=False)
        s = cv2.boxFilter(x * band[..., None], -1, k, normalize=False)
        out: np.ndarray = s / np.maximum(w, 1e-3)[..., None]
        return out

    d = mean(inner) - mean(outer)
    out: np.ndarray = np.sqrt((d * d).sum(axis=-1))
    return out


def _texture_step(x: np.ndarray, inner: np.ndarray, outer: np.ndarray, border: np.ndarray
                  ) -> float:
    """The step x makes across the boundary's shape moved by SHIFT pixels each way (the
    median over its pixels, the median over the four moves): the step its texture makes
    anywhere, against which a step along the boundary itself is measured."""
    steps = []
    for dy, dx in ((SHIFT, 0), (-SHIFT, 0), (0, SHIFT), (0, -SHIFT)):
        def move(m: np.ndarray, dy: int = dy, dx: int = dx) -> np.ndarray:
            out: np.ndarray = np.roll(m, (dy, dx), axis=(0, 1))
            return out
        steps.append(float(np.median(_step(x, move(inner), move(outer))[move(border)])))
    return float(np.median(steps))


def _is_stuck_on(s: np.ndarray, o: np.ndarray, changed: np.ndarray) -> bool:
    """Does side `s` of a region (RGB, aligned and tone-matched with `o`) carry a new closed
    object over the changed pixels `changed`?

    The object: the changed pixels closed and their holes filled, the largest piece. It
    must be compact (convex), new as a whole (the two sides differ over most of it: changed
    text leaves the shared background between its strokes), and carry a near-uniform fill
    (apart from its print); along its boundary `s` must make a step (its outline) that `o`
    does not make (a photo continues under a sticker; a recoloured accent keeps its
    boundary on both sides)."""
    import cv2
    from scipy import ndimage

    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (CLOSE, CLOSE))
    shut = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_CLOSE, disk) > 0
    labels, n = ndimage.label(ndimage.binary_fill_holes(shut))
    if n == 0:
        return False
    obj = labels == np.bincount(labels[labels > 0]).argmax()
    area = int(obj.sum())
    if area < MIN_AREA:
        return False
    new = (changed & obj).sum() / area
    if new < NEW_QUIET:
        return False
    if (changed & ~obj).sum() > (1 - COVERS) * changed.sum():
        return False
    u8 = obj.astype(np.uint8)
    pts = cv2.findContours(u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    hull = cv2.convexHull(np.concatenate(pts))  # in pixel centres: add half its perimeter
    solid = area / (cv2.contourArea(hull) + cv2.arcLength(hull, True) / 2 + 1)
    if solid < SOLIDITY:
        # notched: print that matches the photo under it bites into a small label; the
        # object is its hull when the tests below find the label's outline along the
        # hull (across the notches' mouths) and the hull new enough as a whole
        obj = cv2.fillConvexPoly(np.zeros_like(u8), hull, 1) > 0
        area = int(obj.sum())
        new = (changed & obj).sum() / area
        if new < NEW_QUIET:
            return False
        u8 = obj.astype(np.uint8)
    fill = _commonest_colour(s[obj])
    share = (np.sqrt(((s[obj] - fill) ** 2).sum(axis=-1)) <= FILL).mean()
    if share < FILL_SHARE:
        return False
    three = np.ones((3, 3), np.uint8)
    inner = obj & ~(cv2.erode(u8, three, iterations=BAND) > 0)
    outer = (cv2.dilate(u8, three, iterations=BAND) > 0) & ~obj
    border = inner & ~(cv2.erode(u8, three) > 0)
    rs, so = _local_range(s)[border], _step(o, inner, outer)[border]
    texture = _texture_step(o, inner, outer, border)
    if new < NEW_OBJECT and texture >= QUIET:
        return False
    lacks = ((rs >= EDGE_MIN) & (so < max(STEP_MIN, TEXTURE_RATIO * texture))).mean()
    return bool(lacks >= NEW_OUTLINE)


def is_sticker_pair(pa: np.ndarray, pb: np.ndarray, warp: np.ndarray, mirrored: bool,
                    region: tuple[int, int, int, int] | None) -> bool:
    """The second look at one pair: look pictures `pa`, `pb` (LOOK_SIDE^2 RGB), b brought
    onto a by the detail grid's `warp` (after mirroring), the changed `region` (detail
    grid; None: the 128 px residual spreads, the region is taken from the look's own
    changed pixels, `look_region`). True when one side stuck a new closed object over
    the region."""
    scale = LOOK_SIDE / DETAIL_SIDE
    if mirrored:
        pb = np.ascontiguousarray(pb[:, ::-1])
    w = warp.copy()
    w[:, 2] *= scale
    b, valid = V._warp(pb, w)
    a = pa
    b = _tone_matched(a, b, valid)
    dist = V._diff(a[None], b[None], True, V._chroma_dist)[0]
    changed = (dist > DIFF) & valid
    if region is None:
        found = look_region(changed)
        if found is None:
            return False
        x0, y0, x1, y1 = found
    else:
        x0, y0, x1, y1 = (int(v * scale) for v in region)
    y0, x0 = max(0, y0 - PAD), max(0, x0 - PAD)
    y1, x1 = min(LOOK_SIDE, y1 + PAD), min(LOOK_SIDE, x1 + PAD)
    sl = (slice(y0, y1), slice(x0, x1))
    ch = changed[sl]
    if ch.sum() < MIN_AREA / 2:
        return False
    return _is_stuck_on(a[sl], b[sl], ch) or _is_stuck_on(b[sl], a[sl], ch)


def stickers(details_a: Sequence[bytes], details_b: Sequence[bytes],
             thumbs_a: Sequence[bytes | None], thumbs_b: Sequence[bytes | None],
             params: V.VisualParams | None = None) -> np.ndarray:
    """Per pair (pairs the visual check capped for one region): is it a sticker on a
    second look? A pair without both thumbnails keeps its verdict (False)."""
    params = params or V.VisualParams()
    n = len(details_a)
    out = np.zeros(n, bool)
    have = [i for i in range(n) if thumbs_a[i] and thumbs_b[i]]
    if not have:
        return out
    ga, ca = unpack_details([details_a[i] for i in have])
    gb, cb = unpack_details([details_b[i] for i in have])
    r = V.compare_details(ga, ca, gb, cb, params)

    def look(j: int) -> bool:
        i = have[j]
        region = changed_region(r, j, params)
        if region is None and (r.grey_map[j] > params.grey_clean).mean() > V.REGION_AREA:
            return False  # more changed than one region's box holds: no second look
        warp = r.warp[j]  # the alignment the check kept for this pair
        ta, tb = thumbs_a[i], thumbs_b[i]
        assert ta is not None and tb is not None
        return is_sticker_pair(look_picture(ta, details_a[i]), look_picture(tb, details_b[i]),
                               warp, bool(r.mirrored[j]), region)

    # pairs side by side on the verify stage's threads (ECC, decoding and OpenCV release
    # the GIL); each pair's answer depends on that pair alone
    with ThreadPoolExecutor(max(1, min(V.THREADS, os.cpu_count() or 1))) as pool:
        out[have] = list(pool.map(look, range(len(have))))
    return out


#: Loads the stored thumbnails of some image ids (missing or old signatures: None).
ThumbLoader = Callable[[list[str]], dict[str, bytes | None]]


def forgive_stickers(score: np.ndarray, verified: np.ndarray, reason: np.ndarray,
                     details_a: Sequence[bytes], details_b: Sequence[bytes],
                     ids_a: Sequence[str], ids_b: Sequence[str], thumbs: ThumbLoader
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The verify stage's hook: the pairs the visual check capped for one region get a
    second look; those it finds a sticker on get their score back (compare's, held under
    the retouch cap: a stickered copy is `retouched`, not `same`) and the STICKER reason.
    `thumbs` loads the thumbnails of those pairs' images only (memory stays bounded); a
    pair with a thumbnail missing keeps its verdict."""
    todo = [int(i) for i in np.flatnonzero(np.isin(reason, LOOKED_AT) & (verified < score))]
    if not todo:
        return verified, reason
    found = thumbs(sorted({ids_a[i] for i in todo} | {ids_b[i] for i in todo}))
    hit = np.array(todo)[stickers([details_a[i] for i in todo], [details_b[i] for i in todo],
                        [found.get(ids_a[i]) for i in todo],
                        [found.get(ids_b[i]) for i in todo])]
    verified, reason = verified.copy(), reason.copy()
    verified[hit] = np.minimum(score[hit], V.VisualParams().retouch_cap)
    reason[hit] = V.STICKER
    return verified, reason
