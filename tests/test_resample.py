"""npimage.ingest.resample gives Pillow's BOX resize to the byte, and so do the detail
signature and the report's thumbnail that use it (their bytes must not move: stored
signatures are reused across runs)."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from npimage.fv.models import FITS, fit_square
from npimage.ingest.resample import (
    LANCZOS,
    REDUCING_GAP,
    Pixels,
    fit_lanczos,
    plain_thumbnail,
    resize,
    resize_box,
    thumbnail_size,
)
from npimage.ingest.signatures import pixel_features
from npimage.ingest.thumbnail import THUMB_SIZE, fit_size, thumbnail_jpeg
from npimage.matching import detail as D


def _picture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Noise with a smooth ramp and a flat patch: every pass's rounding shows in it."""
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ramp = (np.arange(w)[None, :, None] * 255 // max(w - 1, 1)).astype(np.uint8)
    a[: h // 2] = np.broadcast_to(ramp, (h // 2, w, 3))
    a[h // 3: h // 2 + 1, : w // 3] = 255
    return a


def _pillow(a: np.ndarray, size: tuple[int, int], box=None) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BOX, box=box))


@pytest.mark.parametrize("seed", range(6))
def test_resize_box_is_pillows_to_the_byte(seed):
    r = random.Random(seed)
    rng = np.random.default_rng(seed)
    for _ in range(40):
        w, h = r.randint(1, 260), r.randint(1, 260)
        a = _picture(rng, w, h)
        size = (r.choice([r.randint(1, w), r.randint(1, 2 * w), w]),
                r.choice([r.randint(1, h), r.randint(1, 2 * h), h]))
        box = None
        if r.random() < 0.5:  # a crop, in whole pixels or not
            x0, y0 = r.uniform(0, w / 2), r.uniform(0, h / 2)
            box = (x0, y0, r.uniform(x0 + 0.5, w), r.uniform(y0 + 0.5, h))
            if r.random() < 0.5:
                box = tuple(float(int(v)) for v in box)
                if box[2] <= box[0] or box[3] <= box[1]:
                    box = None
        ours = resize_box(a, size, box)
        assert ours.shape == (size[1], size[0], 3)
        assert np.array_equal(ours, _pillow(a, size, box)), (w, h, size, box)


def test_both_pass_orders_and_the_crop_shortcut():
    """Pillow 13 runs the vertical pass first when the height shrinks much more than the
    width, and crops when the box is whole pixels of the output's size."""
    rng = np.random.default_rng(1)
    a = _picture(rng, 120, 400)
    px = Pixels(a)
    for size, box in [((100, 60), None),  # vertical first
                      ((60, 300), None),  # horizontal first
                      ((120, 90), None), ((50, 400), None),  # one pass only
                      ((120, 400), None),  # none: a copy
                      ((40, 50), (10, 20, 50, 70)),  # a crop
                      ((40, 50), (10.5, 20, 50.5, 70))]:  # not a crop: resampled
        assert np.array_equal(resize_box(px, size, box), _pillow(a, size, box)), (size, box)


def test_pixels_refuse_what_is_neither_rgb_nor_grey():
    for bad in (np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                np.zeros(4, np.uint8)):
        with pytest.raises(ValueError, match="RGB"):
            Pixels(bad)


def _reference_detail(rgb: Image.Image) -> bytes:
    """The detail signature through Pillow's resizes only (as before npimage.ingest.resample)."""
    box = D.content_box(rgb, D.box_thumbnail(rgb))
    ycc = rgb.resize((D.DETAIL_SIDE, D.DETAIL_SIDE), Image.Resampling.BOX,
                     box=box).convert("YCbCr")
    chroma = ycc.reduce(D.DETAIL_SIDE // D.CHROMA_SIDE)
    frac = np.array([box[0] / rgb.width, box[1] / rgb.height, box[2] / rgb.width,
                     box[3] / rgb.height])
    return (bytes([D.DETAIL_VERSION]) + ycc.getchannel(0).tobytes()
            + chroma.getchannel(1).tobytes() + chroma.getchannel(2).tobytes()
            + np.round(frac * 255).astype(np.uint8).tobytes())


def _reference_thumb(rgb: Image.Image) -> bytes:
    size = fit_size(rgb.width, rgb.height, THUMB_SIZE)
    small = rgb if size == rgb.size else rgb.resize(size, Image.Resampling.BOX)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=80)
    return out.getvalue()


def _product_shots(n: int) -> list[Image.Image]:
    """Packs on a backdrop with margins (the content box crops them), photos without one,
    portrait and landscape, one carrying a JPEG comment in its info."""
    r = random.Random(5)
    rng = np.random.default_rng(5)
    shots = []
    for i in range(n):
        w, h = r.randint(20, 520), r.randint(20, 520)
        a = np.full((h, w, 3), 255 if i % 3 else r.randint(0, 255), np.uint8)
        x0, y0 = r.randint(0, w // 3), r.randint(0, h // 3)
        x1, y1 = r.randint(x0 + 1, w), r.randint(y0 + 1, h)
        a[y0:y1, x0:x1] = _picture(rng, x1 - x0, y1 - y0)
        img = Image.fromarray(a)
        if i % 4 == 0:
            img.info["comment"] = b"shot on a turntable"
        shots.append(img)
    return shots


def test_detail_signature_box_and_thumbnail_are_pillows_bytes():
    for rgb in _product_shots(60):
        assert np.array_equal(D.box_pixels(rgb), np.asarray(D.box_thumbnail(rgb)))
        assert D.detail_signature(rgb) == _reference_detail(rgb)
        assert thumbnail_jpeg(rgb) == _reference_thumb(rgb)
        _, detail, thumb = pixel_features(rgb)  # one Pixels shared by every resize
        assert (detail, thumb) == (_reference_detail(rgb), _reference_thumb(rgb))


def test_large_and_other_mode_pictures_keep_pillows_path():
    """thumbnail() reduces first when it shrinks by 4 or more; other modes stay Pillow's."""
    rng = np.random.default_rng(3)
    big = Image.fromarray(_picture(rng, 900, 700))
    assert not plain_thumbnail(big, thumbnail_size(900, 700, D.BOX_SIDE))
    assert np.array_equal(D.box_pixels(big), np.asarray(D.box_thumbnail(big)))
    assert D.detail_signature(big) == _reference_detail(big)
    rgba = Image.fromarray(_picture(rng, 200, 150)).convert("RGBA")
    assert D.detail_signature(rgba) == _reference_detail(rgba)


def test_thumbnail_size_is_pillows():
    r = random.Random(2)
    for _ in range(300):
        w, h = r.randint(1, 2000), r.randint(1, 2000)
        img = Image.new("RGB", (w, h))
        img.thumbnail((D.BOX_SIDE, D.BOX_SIDE), Image.Resampling.BOX)
        assert thumbnail_size(w, h, D.BOX_SIDE) == img.size, (w, h)


def test_the_grey_copy_is_the_hashes_one():
    """pixel_features makes the hashes' grey copy with npimage.ingest.resample: the bytes
    of npimage.matching.hashing.grey_copy (Pillow's L conversion and BILINEAR resize)."""
    from npimage.matching.hashing import GREY_SIDE, grey_copy

    shots = _product_shots(40)
    rng = np.random.default_rng(9)
    shots += [Image.fromarray(_picture(rng, w, h)) for w, h in
              [(348, 348), (348, 464), (464, 348), (512, 40), (30, 500), (64, 64), (20, 20)]]
    for rgb in shots:
        grey, _, _ = pixel_features(rgb)
        assert np.array_equal(grey, grey_copy(rgb)), rgb.size
        assert grey.shape == (GREY_SIDE, GREY_SIDE) and grey.dtype == np.uint8


def test_bilinear_resize_is_pillows_to_the_byte():
    from npimage.ingest.resample import BILINEAR, resize

    r = random.Random(11)
    rng = np.random.default_rng(11)
    for _ in range(80):
        w, h = r.randint(1, 400), r.randint(1, 400)
        a = _picture(rng, w, h)
        size = (r.randint(1, 2 * w), r.randint(1, 2 * h))
        for pic in (a, a[:, :, 0]):
            ref = np.asarray(Image.fromarray(pic).resize(size, Image.Resampling.BILINEAR))
            got = resize(pic, size, kind=BILINEAR)
            assert np.array_equal(got.reshape(ref.shape), ref), (w, h, size, pic.ndim)


@pytest.mark.parametrize("seed", range(3))
def test_resize_lanczos_is_pillows_to_the_byte(seed):
    """LANCZOS's negative lobes and libm's sin: the same coefficients and clipping."""
    r = random.Random(100 + seed)
    rng = np.random.default_rng(100 + seed)
    for _ in range(25):
        w, h = r.randint(1, 900), r.randint(1, 900)
        a = _picture(rng, w, h)
        size = (r.randint(1, w), r.randint(1, h))
        pillow = np.asarray(Image.fromarray(a).resize(size, Image.Resampling.LANCZOS))
        assert np.array_equal(resize(a, size, kind=LANCZOS), pillow), (w, h, size)


def _thumbnail(img: Image.Image, side: int) -> Image.Image:
    out = img.copy()
    out.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    return out


def test_fit_lanczos_is_pillows_thumbnail():
    """Every aspect (the size's rounding), one-step fits done here, the two-step ones
    (an integer reduce first) and other modes left to Pillow, small pictures untouched."""
    r = random.Random(7)
    rng = np.random.default_rng(7)
    sizes = [(800, 533), (533, 800), (1023, 1), (1, 1023), (513, 512), (2100, 900),
             (3000, 3000), (512, 512), (300, 200), (1000, 997)]
    sizes += [(r.randint(1, 1400), r.randint(1, 1400)) for _ in range(30)]
    for w, h in sizes:
        img = Image.fromarray(_picture(rng, w, h))
        for pic in (img, img.convert("L")):
            fitted = fit_lanczos(pic, 512)
            expected = _thumbnail(pic, 512)
            assert fitted.size == expected.size and fitted.mode == expected.mode, (w, h)
            assert np.array_equal(np.asarray(fitted), np.asarray(expected)), (w, h, pic.mode)
        assert img.size == (w, h)  # never changed in place
        assert (fit_lanczos(img, 512) is img) == (max(w, h) <= 512)


def _reference_fit(rgb: Image.Image, size: int, fit: str) -> np.ndarray:
    """The FV's fit through Pillow only (as before npimage.ingest.resample did it)."""
    w, h = rgb.size
    if fit == "squash":
        return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR))
    if fit == "crop":
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR, box=box))
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(rgb.resize((nw, nh), Image.Resampling.BILINEAR),
                 ((size - nw) // 2, (size - nh) // 2))
    return np.asarray(canvas)


def test_fv_fit_is_pillows_from_a_picture_or_its_pixels():
    """The FV's input pixels must not move (stored vectors are reused across runs)."""
    for rgb in [*_product_shots(30), Image.new("L", (300, 120), 90)]:
        px = Pixels(np.asarray(rgb.convert("RGB")))
        for fit in FITS:
            expected = _reference_fit(rgb.convert("RGB"), 224, fit)
            assert np.array_equal(fit_square(rgb, 224, fit), expected), (rgb.size, fit)
            assert np.array_equal(fit_square(px, 224, fit), expected), (rgb.size, fit)


def _every_colour() -> np.ndarray:
    """(4096, 4096, 3) uint8: each of the 2^24 RGB colours once."""
    v = np.arange(1 << 24, dtype=np.uint32)
    return np.stack([v >> 16, (v >> 8) & 255, v & 255], axis=-1).astype(np.uint8).reshape(
        4096, 4096, 3)


def test_grey_and_ycbcr_kernels_are_pillows_for_every_colour():
    """`Pixels.grey` is Pillow's convert("L") and `detail._planes` its convert("YCbCr"),
    for all 2^24 colours (factor 1: no reduction), so no picture can tell them apart."""
    rgb = _every_colour()
    img = Image.fromarray(rgb)
    grey = Pixels(rgb[:64, :64]).grey()  # and its transposition, from the turned pixels
    assert np.array_equal(grey.array[:, :, 0], np.asarray(img.crop((0, 0, 64, 64)).convert("L")))
    assert np.array_equal(grey.turned, np.ascontiguousarray(grey.array.transpose(1, 0, 2)))
    assert np.array_equal(Pixels(rgb).grey().array[:, :, 0], np.asarray(img.convert("L")))
    planes = D._planes(rgb, *D._ycc_tables(), 1).reshape(3, 4096, 4096)
    assert np.array_equal(planes, np.asarray(img.convert("YCbCr")).transpose(2, 0, 1))


@pytest.mark.parametrize("seed", range(3))
def test_detail_planes_reduce_the_chroma_as_pillow(seed):
    """Y, then Cb and Cr reduced 4x4 (Pillow's rounding of the mean), on noise, flats and
    extremes."""
    rng = np.random.default_rng(seed)
    side = D.DETAIL_SIDE
    for a in (rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
              np.where(rng.random((side, side, 1)) < 0.5, 255, 0).astype(np.uint8).repeat(3, 2),
              _picture(rng, side, side)):
        ycc = Image.fromarray(a).convert("YCbCr")
        chroma = ycc.reduce(D.DETAIL_SIDE // D.CHROMA_SIDE)
        want = (ycc.getchannel(0).tobytes() + chroma.getchannel(1).tobytes()
                + chroma.getchannel(2).tobytes())
        assert D._planes(a, *D._ycc_tables(), side // D.CHROMA_SIDE).tobytes() == want


def _far_counts_reference(a: np.ndarray, tolerance: int) -> tuple[np.ndarray, np.ndarray]:
    """The far counts in NumPy: 4x backdrops of the two end pixels (one when one wide)."""
    v = 4 * a.astype(np.int32)
    kx, ky = min(2, a.shape[1]), min(2, a.shape[0])
    rows = (a[:, :kx].astype(np.int32).sum(1) + a[:, -kx:].astype(np.int32).sum(1)) * (2 // kx)
    cols = (a[:ky].astype(np.int32).sum(0) + a[-ky:].astype(np.int32).sum(0)) * (2 // ky)
    far = ((np.abs(v - rows[:, None]).max(-1) > 4 * tolerance)
           & (np.abs(v - cols[None]).max(-1) > 4 * tolerance))
    return far.sum(1), far.sum(0)


def test_far_counts_and_content_box_on_random_small_copies():
    """The branch-free far counts against NumPy, odd shapes (1 x n, n x 1) included
    (tests/test_signature_stage.py holds `content_box` to its NumPy definition)."""
    r = random.Random(4)
    rng = np.random.default_rng(4)
    for _ in range(300):
        w, h = r.choice([1, 2, 3, r.randint(1, 160)]), r.choice([1, 2, 3, r.randint(1, 160)])
        a = np.full((h, w, 3), r.randint(0, 255), np.uint8)
        y0, x0 = r.randint(0, h - 1), r.randint(0, w - 1)
        a[y0:r.randint(y0 + 1, h), x0:r.randint(x0 + 1, w)] = rng.integers(
            0, 256, 3, dtype=np.uint8)
        if r.random() < 0.3:
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        rows, cols = D._far_counts(a, D.BACKDROP_TOLERANCE)
        want_rows, want_cols = _far_counts_reference(a, D.BACKDROP_TOLERANCE)
        assert np.array_equal(rows, want_rows) and np.array_equal(cols, want_cols), (w, h)
