"""JPEGs decoded by simplejpeg (npimage.ingest.decode._turbo_rgb) give Pillow's pixels, so
the signatures computed from them do not move (stored signatures are reused across runs);
what simplejpeg does not take (CMYK, broken files) is Pillow's, with Pillow's reasons."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npimage.ingest import decode as D

GROCERY = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "grocery-store"


def _pillow_decode(data: bytes, monkeypatch: pytest.MonkeyPatch) -> D.Decoded:
    """`decode` with simplejpeg switched off: Pillow decodes every file."""
    with monkeypatch.context() as m:
        m.setattr(D, "_turbo_rgb", lambda data, img: None)
        return D.decode(data, 10**9)


def _same(a: D.Decoded, b: D.Decoded) -> bool:
    return ((a.width, a.height, a.rgb.size, a.rgb.mode) == (b.width, b.height, b.rgb.size,
                                                           b.rgb.mode)
            and a.rgb.tobytes() == b.rgb.tobytes() and a.rgb.info == b.rgb.info)


def _jpeg(side: tuple[int, int], mode: str = "RGB", **save: object) -> bytes:
    rng = np.random.default_rng(side[0] * 7 + side[1])
    h, w = side[1], side[0]
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                     ((xx + yy) % 64) * 4], axis=-1)
    pixels = np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, "JPEG", **save)
    return out.getvalue()


@pytest.mark.parametrize("side", [(348, 348), (1, 1), (31, 7), (513, 200), (1025, 700),
                                  (1600, 1200), (2049, 1024), (4100, 300)])
@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("save", [{"quality": 90}, {"quality": 75, "progressive": True},
                                  {"quality": 95, "subsampling": 0},
                                  {"quality": 80, "subsampling": 1}])
def test_simplejpeg_gives_pillows_pixels_at_every_draft_scale(side, mode, save, monkeypatch):
    data = _jpeg(side, mode, **save)
    img = Image.open(io.BytesIO(data))
    assert D._turbo_rgb(data, img) is not None  # the fast path is taken
    assert _same(D.decode(data, 10**9), _pillow_decode(data, monkeypatch))


def test_orientation_and_icc_profile_are_kept(monkeypatch):
    exif = Image.Exif()
    exif[0x0112] = 6
    for extra in ({"exif": exif}, {"icc_profile": b"\0" * 300}):
        data = _jpeg((400, 300), **extra)
        fast = D.decode(data, 10**9)
        assert _same(fast, _pillow_decode(data, monkeypatch))
    assert (fast.width, fast.height) == (400, 300) and "icc_profile" in fast.rgb.info
    turned = D.decode(_jpeg((400, 300), exif=exif), 10**9)
    assert (turned.width, turned.height) == (300, 400)


def test_cmyk_and_broken_jpegs_are_left_to_pillow():
    cmyk = _jpeg((300, 200), "CMYK")
    assert D._turbo_rgb(cmyk, Image.open(io.BytesIO(cmyk))) is None
    assert D.decode(cmyk, 10**9).rgb.size == (300, 200)
    good = _jpeg((300, 200))
    cut = good[: len(good) // 2]
    assert D._turbo_rgb(cut, Image.open(io.BytesIO(cut))) is None
    with pytest.raises(D.ImageError, match="corrupt or truncated JPEG"):
        D.decode(cut, 10**9)


def test_reading_picture_is_pillows_too(monkeypatch):
    data = _jpeg((3500, 1000))
    fast = D.decode_for_reading(data, 10**9)
    with monkeypatch.context() as m:
        m.setattr(D, "_turbo_rgb", lambda data, img: None)
        slow = D.decode_for_reading(data, 10**9)
    assert _same(fast, slow)


def test_real_photos_decode_to_pillows_pixels(monkeypatch):
    if not GROCERY.is_dir():
        pytest.skip(f"dataset absent: {GROCERY} (../shared/datasets)")
    photos = sorted(GROCERY.rglob("*.jpg"))[::40]
    assert photos
    for path in photos:
        data = path.read_bytes()
        assert _same(D.decode(data, 10**9), _pillow_decode(data, monkeypatch)), path
