"""The signature stage's per-image work: NumPy hashes against imagehash, the detail
signature against its reference algorithm, the signature version forcing a recompute, and
the report rendering from the thumbnails the stage stored (no image decoded)."""

from __future__ import annotations

import io
from pathlib import Path

import imagehash
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from npimage.config import Settings
from npimage.ingest.decode import decode, draft_scale
from npimage.matching import detail as D
from npimage.matching.hashing import grey_copy, hamming, hashes_of_greys, image_hashes
from npimage.pipeline import settings_context
from npimage.runner import run_pipeline
from npimage.schemas import SIGNATURE_VERSION

GROCERY = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "grocery-store"


def _pack(h: imagehash.ImageHash) -> int:
    return int(np.packbits(h.hash.ravel()).view(">i8")[0])


def _imagehash(rgb: Image.Image) -> tuple[int, int, int]:
    grey = rgb.convert("L")
    return (_pack(imagehash.average_hash(grey)), _pack(imagehash.dhash(grey)),
            _pack(imagehash.phash(grey)))


def _pack_shot(seed: int, size: tuple[int, int] = (420, 360)) -> Image.Image:
    """A product-like picture: a coloured pack with stripes and text on a white backdrop."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(img)
    x0, y0 = (int(f * side) for f, side in zip(rng.uniform(0.07, 0.25, 2), size, strict=True))
    colour = tuple(int(c) for c in rng.integers(0, 200, 3))
    pen.rectangle((x0, y0, size[0] - x0 // 2, size[1] - y0 // 3), fill=colour)
    for k in range(int(rng.integers(2, 6))):
        y = y0 + 20 + 25 * k
        pen.rectangle((x0, y, max(x0, size[0] - x0), y + 8), fill=(255, 255, 255))
    pen.text((x0 + 20, size[1] // 2), f"LOT {seed:04d}", fill=(0, 0, 0))
    pen.ellipse((x0, y0, x0 + size[0] // 8, y0 + size[1] // 8), fill=(240, 240, 30))
    return img


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _agreement(rgbs: list[Image.Image]) -> np.ndarray:
    ours = hashes_of_greys(np.stack([grey_copy(rgb) for rgb in rgbs]))
    theirs = np.array([_imagehash(rgb) for rgb in rgbs], np.int64)
    return hamming(ours, theirs).astype(float)


def test_hashes_agree_with_imagehash_on_drawn_packs():
    """Same definitions as imagehash: within 1.5 bits per hash on average (measured 0.2,
    1.1, 0.3: flat drawn colours make dhash ties that the small grey copy breaks)."""
    rgbs = [decode(_jpeg(_pack_shot(s)), 10**8).rgb for s in range(40)]
    dist = _agreement(rgbs)
    assert dist.mean(axis=0).max() <= 1.5, dist.mean(axis=0)
    assert dist.max() <= 8


@pytest.mark.skipif(not GROCERY.is_dir(), reason="needs ../shared/datasets/grocery-store")
def test_hashes_agree_with_imagehash_on_real_photos():
    """Measured 0.1 / 0.3 / 0.1 bits (ahash / dhash / phash) on these photos."""
    paths = sorted(GROCERY.rglob("*.jpg"))[::40][:80]
    rgbs = [decode(p.read_bytes(), 10**8).rgb for p in paths]
    dist = _agreement(rgbs)
    assert dist.mean(axis=0).max() <= 0.6, dist.mean(axis=0)
    assert dist.max() <= 8


def test_hash_bits_are_packed_like_imagehash():
    """Left half black, right half white: each row of ahash is 00001111, first bit highest;
    phash of a flat picture: only its DC coefficient is above the median (as imagehash)."""
    grey = np.zeros((1, 64, 64), np.uint8)
    grey[:, :, 32:] = 255
    ah, dh, _ = hashes_of_greys(grey)[0]
    assert np.int64(ah).view(np.uint64) == np.uint64(0x0F0F0F0F0F0F0F0F)
    assert dh == _pack(imagehash.dhash(Image.fromarray(grey[0])))
    flat = hashes_of_greys(np.full((1, 64, 64), 200, np.uint8))[0]
    assert flat[0] == 0 and flat[2] == _pack(imagehash.phash(Image.new("L", (64, 64), 200)))
    assert np.int64(flat[2]).view(np.uint64) == np.uint64(1 << 63)


def test_batch_hashes_equal_one_by_one():
    rgbs = [_pack_shot(s) for s in range(5)]
    batch = hashes_of_greys(np.stack([grey_copy(r) for r in rgbs]))
    assert [tuple(int(v) for v in row) for row in batch] == [image_hashes(r) for r in rgbs]


def _reference_box(rgb: Image.Image) -> tuple[int, int, int, int]:
    """The content box as first written (NumPy on (h, w, 3)): the fitted definition."""
    small = rgb.copy()
    small.thumbnail((160, 160), Image.Resampling.BOX)
    a = np.asarray(small, dtype=np.int16)
    h, w = a.shape[:2]
    rows = (a[:, :2].mean(axis=1) + a[:, -2:].mean(axis=1)) / 2
    cols = (a[:2].mean(axis=0) + a[-2:].mean(axis=0)) / 2
    far = ((np.abs(a - rows[:, None]).max(-1) > D.BACKDROP_TOLERANCE)
           & (np.abs(a - cols[None]).max(-1) > D.BACKDROP_TOLERANCE))
    ys = np.flatnonzero(far.mean(axis=1) > D.CONTENT_SHARE)
    xs = np.flatnonzero(far.mean(axis=0) > D.CONTENT_SHARE)
    if len(ys) < h * 0.1 or len(xs) < w * 0.1:
        return (0, 0, rgb.width, rgb.height)
    my, mx = D.BOX_MARGIN * (ys[-1] - ys[0] + 1), D.BOX_MARGIN * (xs[-1] - xs[0] + 1)
    sx, sy = rgb.width / w, rgb.height / h
    return (max(0, int((xs[0] - mx) * sx)), max(0, int((ys[0] - my) * sy)),
            min(rgb.width, int(np.ceil((xs[-1] + 1 + mx) * sx))),
            min(rgb.height, int(np.ceil((ys[-1] + 1 + my) * sy))))


@pytest.mark.parametrize("size", [(420, 360), (360, 500), (512, 120), (1, 90), (90, 1)])
def test_content_box_is_the_fitted_definition(size):
    for seed in range(6):
        img = _pack_shot(seed, (max(size[0], 1), max(size[1], 1)))
        assert D.content_box(img) == _reference_box(img)


def test_detail_signature_within_a_few_levels_of_the_direct_computation():
    """Luma and chroma: the box squashed then converted vs converted then squashed."""
    for seed in range(8):
        img = _pack_shot(seed)
        sig = np.frombuffer(D.detail_signature(img), np.uint8).astype(int)
        box = D.content_box(img)
        ycc = img.crop(box).convert("YCbCr")
        luma = np.asarray(ycc.getchannel(0).resize((D.DETAIL_SIDE,) * 2, Image.Resampling.BOX))
        chroma = ycc.resize((D.CHROMA_SIDE,) * 2, Image.Resampling.BOX)
        g, c = D.DETAIL_SIDE ** 2, D.CHROMA_SIDE ** 2
        assert sig[0] == D.DETAIL_VERSION and len(sig) == D.DETAIL_BYTES
        assert np.abs(sig[1:1 + g] - luma.ravel()).max() <= 2
        cb = np.asarray(chroma.getchannel(1)).ravel().astype(int)
        assert np.abs(sig[1 + g:1 + g + c] - cb).mean() <= 1.0


def test_jpeg_is_decoded_at_the_scale_consumers_need():
    """A 1600 px JPEG decodes at 1/2 (800 px, then 512: the working copy of every format);
    a small one at full size."""
    assert draft_scale(1600, 1004) == 2 and draft_scale(348, 348) == 1
    assert draft_scale(6000, 4000) == 8 and draft_scale(4096, 100) == 8
    assert draft_scale(1000, 700) == 1
    big = decode(_jpeg(_pack_shot(1, (1600, 1004))), 10**8)
    assert (big.width, big.height) == (1600, 1004) and big.rgb.size == (512, 321)


def test_jpeg_and_its_png_copy_give_the_same_detail():
    """The DCT-scaled decode stays within a level or two of a full decode's working copy."""
    img = _pack_shot(3, (1600, 1004))
    png = io.BytesIO()
    img.save(png, "PNG")
    a = np.frombuffer(D.detail_signature(decode(_jpeg(img, 95), 10**8).rgb), np.uint8)
    b = np.frombuffer(D.detail_signature(decode(png.getvalue(), 10**8).rgb), np.uint8)
    assert np.abs(a.astype(int) - b).mean() < 1.0


# -- the stage in a run ------------------------------------------------------------------

def _folder(tmp_path: Path, n: int = 12) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for k in range(n):
        _pack_shot(k).save(src / f"p{k:02d}.jpg", "JPEG", quality=90)
    _pack_shot(0).save(src / "p00-copy.jpg", "JPEG", quality=70)  # a duplicate
    return src


def _run(data: Path, src: Path, run_id: str, mode: str = "full") -> dict:
    settings = Settings().with_overrides(data_dir=data, fv=False, read="none")
    ctx = settings_context("acme", str(src), run_id, settings, mode=mode)
    return run_pipeline(ctx, workers=1, report=False)


def test_old_signature_version_is_recomputed(tmp_path):
    """Stored signatures of another SIGNATURE_VERSION are recomputed by the next run."""
    src = _folder(tmp_path)
    data = tmp_path / "data"
    first = _run(data, src, "r1")
    assert _run(data, src, "r2", "incremental")["signatures_computed"] == 0
    shards = sorted((data / "clients").rglob("r2*/signatures/shard-*.parquet"))
    assert shards
    for shard in shards:  # as if npimage of the previous version had written them
        table = pq.read_table(shard)
        old = table.set_column(table.schema.get_field_index("sig_version"), "sig_version",
                               [np.full(table.num_rows, SIGNATURE_VERSION - 1, np.int16)])
        pq.write_table(old, shard)
    for marker in (data / "clients").rglob("sig_counts/*.json"):  # keys of that version
        marker.unlink()
    again = _run(data, src, "r3", "incremental")
    assert again["signatures_computed"] == first["signatures_computed"] == 13


def test_report_renders_stored_thumbnails_without_decoding(tmp_path, monkeypatch):
    """The report writes the thumbnails the signature stage stored: the source images can
    be gone and nothing is decoded."""
    from npimage.report import render_report
    from npimage.report import thumbs as T

    src = _folder(tmp_path)
    data = tmp_path / "data"
    _run(data, src, "r1")
    for f in src.iterdir():
        f.unlink()

    def no_decode(*args, **kwargs):
        raise AssertionError("the report decoded an image")

    monkeypatch.setattr(T, "decode", no_decode)
    out = tmp_path / "report"
    render_report(data, "acme", out)
    thumbs = sorted((out / T.THUMB_DIR).rglob("*.jpg"))
    assert len(thumbs) == 13
    for path in thumbs:
        with Image.open(path) as img:
            assert img.format == "JPEG" and max(img.size) == T.THUMB_SIZE
    assert "unreadable.svg" not in (out / "index.html").read_text()


def test_resume_key_names_the_signature_version(tmp_path, monkeypatch):
    """A batch done by another signature version is never resumed (its key differs)."""
    import pyarrow as pa

    from npimage import resume

    settings = Settings().with_overrides(data_dir=tmp_path / "data", fv=False)
    ctx = settings_context("acme", str(tmp_path), "r1", settings)
    batch = tmp_path / "batch.parquet"
    pq.write_table(pa.table({"image_id": ["a", "b"], "uri": ["/x/a.jpg", "/x/b.jpg"]}), batch)
    key = resume.batch_key(ctx, batch, 10**8)
    assert resume.batch_key(ctx, batch, 10**8) == key
    monkeypatch.setattr(resume, "SIGNATURE_VERSION", SIGNATURE_VERSION + 1)
    assert resume.batch_key(ctx, batch, 10**8) != key


def test_read_all_reads_ahead_and_abandons_a_hung_read(tmp_path, monkeypatch):
    """One reader thread per batch; a read that hangs is given up after the time-out and
    the files after it are still read, in order."""
    import threading
    import time

    from npimage.ingest import decode as dec

    files = []
    for k in range(6):
        path = tmp_path / f"f{k}.bin"
        path.write_bytes(bytes([k]) * (k + 1))
        files.append(str(path))
    hang = threading.Event()
    real = dec._read

    def slow(uri, max_bytes):
        if uri.endswith("f2.bin"):
            hang.wait(5)  # a hung mount
        return real(uri, max_bytes)

    monkeypatch.setattr(dec, "_read", slow)
    t0 = time.perf_counter()
    got = list(dec.read_all([*files, str(tmp_path / "missing.jpg")], timeout=0.5))
    hang.set()
    assert time.perf_counter() - t0 < 4
    assert [g for i, g in enumerate(got[:6]) if i != 2] == [
        bytes([k]) * (k + 1) for k in (0, 1, 3, 4, 5)]
    assert isinstance(got[2], dec.ImageError) and "timed out" in str(got[2])
    assert isinstance(got[6], dec.ImageError) and str(got[6]) == "file not found"


def _encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def test_one_decode_serves_the_signature_and_the_code_reader():
    """decode_both gives `decode`'s and `decode_for_reading`'s pixels, sharing one decode
    where it can (JPEG under 1024 px, other formats), decoding twice where it cannot."""
    from npimage.ingest.decode import decode_both, decode_for_reading

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the working copy is turned upright like the full picture
    shot = _pack_shot(5, (700, 460))
    cases = [
        _jpeg(_pack_shot(1)),
        _jpeg(_pack_shot(2, (300, 500))),
        _encoded(shot, "JPEG", quality=85, exif=exif.tobytes()),
        _jpeg(_pack_shot(3, (1300, 900))),  # draft-scaled working copy: decoded twice
        _encoded(shot.convert("RGBA"), "PNG"),
        _encoded(shot.convert("P"), "PNG"),
        _encoded(_pack_shot(4, (2400, 1800)), "PNG"),  # box-reduced working copy
    ]
    for data in cases:
        work, full = decode_both(data, 10**9)
        ref, ref_full = decode(data, 10**9), decode_for_reading(data, 10**9)
        assert not isinstance(full, Exception)
        assert (work.width, work.height) == (ref.width, ref.height)
        assert np.array_equal(np.asarray(work.rgb), np.asarray(ref.rgb))
        assert full.rgb.size == ref_full.rgb.size
        assert np.array_equal(np.asarray(full.rgb), np.asarray(ref_full.rgb))
