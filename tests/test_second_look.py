"""The second look of verification (issue #12, "same means same"): a price sticker on a
photo, capped by the 128 px visual check as "one region differs", is forgiven on the 240 px
thumbnails; a strength variant of a packshot stays capped; without thumbnails the verdict is
today's. A few seconds."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from npimage_demo import variants
from npimage_demo.catalogue import _sticker
from PIL import Image

from npimage.ingest.decode import decode
from npimage.ingest.signatures import pixel_features
from npimage.matching import verify as V

GROCERY = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"


def _signature(img: Image.Image, quality: int = 92) -> tuple[bytes, bytes]:
    """(detail signature, thumbnail) of a JPEG of img, as the signature stage makes them."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    _, detail, thumb = pixel_features(decode(buf.getvalue(), 10**9).rgb)
    return detail, thumb


def _verify(a: Image.Image, b: Image.Image, with_thumbs: bool = True) -> tuple[float, str]:
    """(verified score, reason) of the pair (a, b) compare scored 0.999."""
    (da, ta), (db, tb) = _signature(a, 95), _signature(b)
    thumbs = {"a": ta, "b": tb}
    pairs = pa.table({"a": ["a"], "b": ["b"], "score": pa.array([0.999], pa.float32())})
    out = V.verify_matches(pairs, {"a": da, "b": db}, None,
                           (lambda ids: {i: thumbs[i] for i in ids}) if with_thumbs else None)
    row = out.to_pylist()[0]
    return row["score"], row["verify_reason"]


def _textured(seed: int, side: int = 348) -> Image.Image:
    """A synthetic photo-like picture: smooth colour blobs over a fine grain."""
    import cv2

    rng = np.random.default_rng(seed)
    low = rng.uniform(40, 220, size=(9, 9, 3)).astype(np.float32)
    img = cv2.resize(low, (side, side), interpolation=cv2.INTER_CUBIC)
    img = img + cv2.GaussianBlur(rng.normal(0, 25, size=(side, side, 3)).astype(np.float32),
                            (0, 0), 1.5)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _capped_sticker(img: Image.Image, seeds: range) -> Image.Image:
    """img with a demo sticker that the 128 px check alone caps (the case of issue #12)."""
    for seed in seeds:
        stuck = _sticker(img, np.random.default_rng(seed))
        if _verify(img, stuck, with_thumbs=False)[0] < 0.95:
            return stuck
    pytest.skip("no sticker placement capped by the 128 px check alone")


def test_a_sticker_on_a_textured_picture_is_forgiven_on_a_second_look():
    img = _textured(0)
    stuck = _capped_sticker(img, range(20))
    score, reason = _verify(img, stuck)
    assert score >= 0.95 and reason == V.STICKER, (score, reason)


def test_a_sticker_on_a_grocery_photo_is_forgiven_on_a_second_look():
    if not GROCERY.is_dir():
        pytest.skip(f"grocery photos not found at {GROCERY} (../shared/datasets)")
    files = sorted((GROCERY / "dataset" / "train").rglob("*.jpg"))[:40:8]
    kept = 0
    for path in files:
        with Image.open(path) as im:
            img = im.convert("RGB")
        stuck = _capped_sticker(img, range(10))
        kept += _verify(img, stuck)[0] >= 0.95
    assert kept >= len(files) - 1, f"{kept} of {len(files)} stickers kept"


def test_without_thumbnails_the_verdict_is_todays():
    img = _textured(0)
    stuck = _capped_sticker(img, range(20))
    assert _verify(img, stuck, with_thumbs=False)[1] in (V.TEXT, V.CODE, V.COLOUR)


def test_a_strength_variant_of_a_packshot_stays_capped():
    rng = np.random.default_rng(3)
    members = [(change, variants._on_white(p, 11))
               for p, change in variants._family(rng, set(), 4)]
    base = members[0][1]
    for change, img in members[1:]:
        score, reason = _verify(base, img)
        assert score < 0.95 and reason != V.STICKER, (change, score, reason)


def _half_covered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sticker side, other side, changed pixels) of a look window where a white price
    sticker's left half lies on a white pack (its fill is not new there: the object is new
    over ~60 % of its area), the photo around it smooth."""
    import cv2

    from npimage.matching import second_look as S

    yy, xx = np.mgrid[0:64, 0:80].astype(np.float32)
    o = np.stack([90 + xx, 110 + 0.5 * yy, 140 - 0.5 * xx], -1)
    o[:, :40] = 245.0
    o8 = np.clip(o, 0, 255).astype(np.uint8)
    s8 = o8.copy()
    cv2.rectangle(s8, (18, 24), (58, 42), (255, 255, 255), -1)
    cv2.rectangle(s8, (18, 24), (58, 42), (40, 40, 40), 1)
    cv2.putText(s8, "4.90", (24, 38), cv2.FONT_HERSHEY_PLAIN, 1.0, (20, 20, 20), 1)
    s, o = s8.astype(np.float32), o8.astype(np.float32)
    return s, o, np.sqrt(((s - o) ** 2).sum(axis=-1)) > S.DIFF


def test_a_sticker_partly_on_its_own_colour_is_found_when_the_photo_under_it_is_quiet():
    from npimage.matching import second_look as S

    s, o, changed = _half_covered()
    obj = np.zeros_like(changed)
    obj[24:43, 18:59] = True
    assert (changed & obj).sum() / obj.sum() < S.NEW_OBJECT  # the case: not new enough
    assert S._is_stuck_on(s, o, changed)
    assert not S._is_stuck_on(o, s, changed)


def test_a_speck_beside_the_changed_region_does_not_stop_the_second_look():
    from npimage.matching import second_look as S
    from npimage.matching.detail import DETAIL_SIDE

    params = V.VisualParams()
    side = DETAIL_SIDE - V.WINDOW + 1
    grey = np.zeros((1, side, side), np.float32)
    a, b = np.zeros((2, 1, DETAIL_SIDE, DETAIL_SIDE), np.float32)

    def change(y0: int, y1: int, x0: int, x1: int) -> None:
        """The pictures differ over [y0, y1) x [x0, x1): windows above the clean level."""
        grey[0, y0:y1, x0:x1] = 2 * params.grey_clean
        b[0, y0:y1 + 1, x0:x1 + 1] = 4.0

    change(40, 46, 50, 62)  # the sticker's cluster of windows
    r = SimpleNamespace(grey_map=grey, chroma_map=np.zeros((1, 8, 8), np.float32), a=a, b=b)
    alone = S.changed_region(r, 0, params)  # type: ignore[arg-type]
    change(100, 101, 10, 11)  # one window just above the clean level
    assert alone is not None and S.changed_region(r, 0, params) == alone  # type: ignore[arg-type]
    change(90, 96, 5, 17)  # a second real change far away
    assert S.changed_region(r, 0, params) is None  # type: ignore[arg-type]


def _seamed(labels: list[tuple[int, int]]) -> SimpleNamespace:
    """A detail-grid comparison (normalised grey a, b, the windowed map of the plain
    difference) of a dark fruit on white against a copy whose alignment left it 0.9 px
    off (seams along its outline, as a sticker on the margin leaves after ECC), with grey
    labels stuck on the copy at `labels` (x, y)."""
    import cv2

    from npimage.matching.detail import DETAIL_SIDE

    xx = np.mgrid[0:DETAIL_SIDE, 0:DETAIL_SIDE][1].astype(np.float32)
    base = np.full((DETAIL_SIDE, DETAIL_SIDE), 240, np.float32)
    cv2.circle(base, (64, 64), 40, 60, -1)
    base += 10 * np.sin(xx / 5) * (base < 100)
    off = cv2.warpAffine(base, np.float32([[1, 0, 0.9], [0, 1, -0.6]]),
                         (DETAIL_SIDE, DETAIL_SIDE), borderMode=cv2.BORDER_REPLICATE)
    for x, y in labels:
        cv2.rectangle(off, (x, y), (x + 12, y + 6), 150, -1)
        off[y + 2:y + 5, x + 2:x + 10:3] = 20  # its print
    a, b = V._norm(base[None]), V._norm(off[None])
    _, gmap = V.grey_residuals(a, b, np.ones_like(a))
    neutral = np.full((1, V.CHROMA_SIDE, V.CHROMA_SIDE, 2), 128, np.uint8)
    return SimpleNamespace(grey_map=gmap, a=a, b=b, ca=neutral, cb=neutral,
                           chroma_map=np.zeros((1, 8, 8), np.float32))


def test_alignment_seams_are_not_changed_regions():
    """Seams along a strong outline vanish with one pixel of tolerance, a label does not:
    the seams are left out of the region; a second label far away is still a second
    region."""
    params = V.VisualParams()
    r = _seamed([(100, 110)])
    assert V.region_areas(r, 0, params) is None  # type: ignore[arg-type]  # seams: spread
    areas = V.region_areas(r, 0, params, seams=True)  # type: ignore[arg-type]
    assert areas is not None and len(areas) == 1
    x, y, w, h = areas[0, :4]
    assert x <= 100 < x + w and y <= 110 < y + h  # the label
    two = _seamed([(100, 110), (5, 5)])
    assert V.region_areas(two, 0, params, seams=True) is None  # type: ignore[arg-type]


def test_a_label_beside_seams_gets_a_second_look_and_two_labels_do_not():
    """The 128 px verdict of a label plus alignment seams is one region (the second look
    then judges it), not "several regions" (never looked at); two labels beside the seams
    stay several, far apart or side by side (two changes, as two variants differ)."""
    params = V.VisualParams()
    reason, sticker = V._region_kind(_seamed([(100, 110)]), 0, params)  # type: ignore[arg-type]
    assert reason in (V.TEXT, V.CODE) and not sticker
    for second in ((5, 5), (78, 110)):
        two = _seamed([(100, 110), second])
        assert V._region_kind(two, 0, params)[0] == V.SEVERAL  # type: ignore[arg-type]


def _notched(print_width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sticker side, other side, changed pixels) of a look window where a small white
    label on a dark photo carries bold dark print reaching its top edge: the print matches
    the photo under it, so the changed pixels are the label with notches bitten out of it.
    `print_width`: the width of each of its two glyphs (pixels)."""
    import cv2

    from npimage.matching import second_look as S

    yy, xx = np.mgrid[0:50, 0:64].astype(np.float32)
    o8 = np.clip(np.stack([40 + 0.3 * xx, 35 + 0.2 * yy, 30 + 0.1 * xx], -1), 0, 255
                 ).astype(np.uint8)
    s8 = o8.copy()
    cv2.rectangle(s8, (20, 20), (43, 30), (250, 250, 250), -1)
    for x in (22, 33):
        cv2.rectangle(s8, (x, 20), (x + print_width - 1, 26), (30, 30, 30), -1)
    s, o = s8.astype(np.float32), o8.astype(np.float32)
    return s, o, np.sqrt(((s - o) ** 2).sum(axis=-1)) > S.DIFF


def test_a_small_label_notched_by_its_print_is_found_by_its_hull():
    import cv2

    from npimage.matching import second_look as S

    s, o, changed = _notched(6)
    pts = cv2.findContours(changed.astype(np.uint8), cv2.RETR_EXTERNAL,
                           cv2.CHAIN_APPROX_SIMPLE)[0]
    hull = cv2.convexHull(np.concatenate(pts))
    assert changed.sum() / cv2.contourArea(hull) < S.SOLIDITY  # the case: not convex
    assert S._is_stuck_on(s, o, changed)
    assert not S._is_stuck_on(o, s, changed)


def test_a_changed_glyph_is_not_taken_for_a_notched_label():
    """A stroke (a "C" of a changed text) is not convex either; its hull is mostly the
    shared background, so it stays a change."""
    import cv2

    from npimage.matching import second_look as S

    o = np.full((50, 64, 3), 235.0, np.float32)
    s8 = o.astype(np.uint8)
    cv2.ellipse(s8, (32, 25), (12, 12), 0, 60, 300, (20, 20, 20), 3)
    s = s8.astype(np.float32)
    changed = np.sqrt(((s - o) ** 2).sum(axis=-1)) > S.DIFF
    assert not S._is_stuck_on(s, o, changed)
    assert not S._is_stuck_on(o, s, changed)


def _label(img: np.ndarray, x: int, y: int) -> np.ndarray:
    """img (look picture, float RGB) with a yellow price label (outline, print) at x, y."""
    import cv2

    out = img.astype(np.uint8).copy()
    cv2.rectangle(out, (x, y), (x + 34, y + 16), (255, 214, 0), -1)
    cv2.rectangle(out, (x, y), (x + 34, y + 16), (40, 40, 40), 1)
    cv2.putText(out, "1.99", (x + 3, y + 12), cv2.FONT_HERSHEY_PLAIN, 0.8, (20, 20, 20), 1)
    return out.astype(np.float32)


def test_the_second_look_finds_the_region_itself_when_the_128px_residual_spreads():
    """No region from the detail grid (one region at 128 px, too spread: alignment seams
    along a strong edge, a content box a sticker on the margin moved): the look's own changed
    pixels make one region, specks left out, and the label there is found; two labels far
    apart are two regions, no second look."""
    from npimage.matching import second_look as S

    pa = np.asarray(_textured(1, S.LOOK_SIDE), np.float32)
    pb = _label(pa, 4, 120)  # at the frame's left border
    pb[30:32, 200:202] += 80.0  # a speck far away (a few JPEG-noise pixels)
    ident = np.eye(2, 3, dtype=np.float32)
    assert S.look_region(np.sqrt(((pa - pb) ** 2).sum(-1)) > S.DIFF) is not None
    assert S.is_sticker_pair(pa, pb, ident, False, None)
    two = _label(pb, 180, 20)
    assert not S.is_sticker_pair(pa, two, ident, False, None)
