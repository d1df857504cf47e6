"""The second look of verification (issue #12, "same means same"): a price sticker on a
photo, capped by the 128 px visual check as "one region differs", is forgiven on the 240 px
thumbnails; a strength variant of a packshot stays capped; without thumbnails the verdict is
today's. A few seconds."""

from __future__ import annotations

import io
from pathlib import Path

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
