"""Hostile input: every bad file becomes a rejects row with its reason, every odd but valid
picture is processed, and no case crashes a batch or the run (docs/RELIABILITY.md).

"Same image" cases go through the real pipeline (hashes only) and read image_matches:
the same photo in another mode, format, bit depth, orientation or frame must score
>= 0.99 against the original. Each such test also holds a control that must NOT match,
so that it can fail.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import duckdb
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import dataset
from PIL import Image, ImageDraw

from npimage.config import Settings
from npimage.ingest.decode import MAX_BYTES, ImageError, decode, read_bytes
from npimage.pipeline import settings_context
from npimage.runner import run_pipeline
from npimage.schemas import CATALOG

SAME = 0.99
CLIENT = "hostile"


# -- pictures ----------------------------------------------------------------------------

def photo(seed: int = 1, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A synthetic product shot: coloured shapes and a gradient band on white."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    w, h = size
    band = Image.linear_gradient("L").resize((w, h // 5)).convert("RGB")
    img.paste(band, (0, rng.randrange(h // 2, h - h // 5)))
    for _ in range(9):
        x0, y0 = rng.randrange(w * 7 // 8), rng.randrange(h * 7 // 8)
        box = (x0, y0, x0 + rng.randrange(w // 16, w // 2), y0 + rng.randrange(h // 16, h // 2))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def transparent(img: Image.Image, mode: str) -> Image.Image:
    """`img` in an alpha mode with its white background fully transparent (and black)."""
    rgba = img.convert("RGBA")
    arr = np.asarray(rgba).copy()
    background = (arr[..., :3] == 255).all(axis=-1)
    arr[background] = (0, 0, 0, 0)
    out = Image.fromarray(arr, "RGBA")
    return out if mode == "RGBA" else out.convert(mode)


def png_raw(width: int, height: int, depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG file built by hand: any IHDR, whatever IDAT (Pillow cannot write these)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grey for 2-D, RGB for 3-D uint16 arrays)."""
    rows = arr.astype(">u2").reshape(arr.shape[0], -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return png_raw(arr.shape[1], arr.shape[0], 16, 2 if arr.ndim == 3 else 0, zlib.compress(raw))


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) declares width x height."""
    data = bytearray(encoded(photo(3, (64, 48)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# -- running the pipeline ----------------------------------------------------------------

def run(data_dir: Path, source: Path, top_k: int = 100, threshold: float = 0.5) -> dict:
    """One full run (hashes only, in process) of `source` for CLIENT."""
    settings = Settings().with_overrides(data_dir=data_dir, fv=False, top_k=top_k,
                                         threshold=threshold)
    ctx = settings_context(CLIENT, str(source), "r1", settings)
    return run_pipeline(ctx, workers=1, report=False)


def query(data_dir: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql, {"c": CLIENT}).fetchall()
    finally:
        con.close()


def scores(data_dir: Path, reference: str) -> dict[str, float]:
    """Score of every image that matched `reference` (image_matches, both directions)."""
    rows = query(data_dir, "SELECT image_id, score FROM image_matches "
                           f"WHERE client_id = $c AND match_image_id = '{reference}'")
    return dict(rows)


def rejects(data_dir: Path) -> dict[str, tuple[str, str]]:
    rows = query(data_dir, "SELECT image_id, stage, reason FROM rejects WHERE client_id = $c")
    return {i: (stage, reason) for i, stage, reason in rows}


def signed(data_dir: Path) -> dict[str, tuple[int, int]]:
    """(width, height) of every image that got a signature."""
    rows = query(data_dir, "SELECT image_id, width, height FROM signatures "
                           "WHERE client_id = $c")
    return {i: (w, h) for i, w, h in rows}


def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "product_id", "uri"])
        writer.writerows(rows)
    return path


# -- bad files -----------------------------------------------------------------------------

BAD_FILES = {
    # image_id: (file name, bytes or a function of the photo's JPEG/PNG bytes, reason part)
    "zero-bytes": ("zero-bytes.jpg", lambda j, p: b"", "empty file (0 bytes)"),
    "truncated-jpeg": ("truncated-jpeg.jpg", lambda j, p: j[: len(j) // 2],
                       "corrupt or truncated"),
    "truncated-jpeg-header": ("truncated-jpeg-header.jpg", lambda j, p: j[:40],
                              "corrupt or truncated JPEG"),
    "truncated-png": ("truncated-png.png", lambda j, p: p[: len(p) // 2],
                      "corrupt or truncated"),
    "truncated-png-header": ("truncated-png-header.png", lambda j, p: p[:30],
                             "corrupt or truncated PNG"),
    "html-as-jpg": ("html-as-jpg.jpg",
                    lambda j, p: b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
                    "not an image or unsupported format (looks like HTML)"),
    "text-as-jpg": ("text-as-jpg.jpg", lambda j, p: "prix: 12,50 € TTC\n".encode() * 20,
                    "not an image or unsupported format (looks like text)"),
    "pdf-as-jpg": ("pdf-as-jpg.jpg",
                   lambda j, p: encoded(photo(5, (80, 60)), "PDF"),
                   "not an image or unsupported format (looks like PDF)"),
    "eps-as-jpg": ("eps-as-jpg.jpg",
                   lambda j, p: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
                   "not an image or unsupported format (looks like PostScript/EPS)"),
    "ico-as-png": ("ico-as-png.png", lambda j, p: encoded(photo(5, (32, 32)), "ICO"),
                   "not an image or unsupported format (looks like ICO)"),
    "svg": ("svg.png", lambda j, p: b'<svg xmlns="http://www.w3.org/2000/svg"/>',
            "not an image or unsupported format (looks like XML/SVG)"),
    "heic": ("heic.jpg", lambda j, p: b"\x00\x00\x00\x18ftypheic" + bytes(64),
             "not an image or unsupported format (looks like HEIC)"),
    "random-bytes": ("random-bytes.webp",
                     lambda j, p: random.Random(0).randbytes(4096),
                     "not an image or unsupported format (starts with bytes"),
}


@pytest.fixture(scope="module")
def bad_catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A folder of hostile files beside good ones, run once through the pipeline."""
    root = tmp_path_factory.mktemp("bad")
    src = root / "catalogue"
    src.mkdir()
    jpeg, png = encoded(photo(), "JPEG", quality=92), encoded(photo(), "PNG")
    for name, make, _ in BAD_FILES.values():
        (src / name).write_bytes(make(jpeg, png))
    (src / "original.jpg").write_bytes(jpeg)
    (src / "png-named-jpg.jpg").write_bytes(png)  # processed: the content decides
    (src / "notes.txt").write_text("not an image")
    (src / "archive.zip").write_bytes(b"PK\x03\x04" + bytes(30))
    info = run(root / "data", src)
    return root / "data", info


def test_bad_files_are_rejected_with_their_reason(bad_catalogue):
    data, info = bad_catalogue
    got = rejects(data)
    for image_id, (_, _, reason) in BAD_FILES.items():
        assert image_id in got, f"{image_id} not rejected"
        stage, why = got[image_id]
        assert stage == "signatures" and reason in why, (image_id, why)
    assert info["rejects"] == len(got) == len(BAD_FILES) + 2
    assert got["notes.txt"] == ("extract", "not an image file extension (.txt)")
    assert got["archive.zip"] == ("extract", "not an image file extension (.zip)")


def test_png_named_jpg_is_processed_and_matches(bad_catalogue):
    data, _ = bad_catalogue
    assert set(signed(data)) == {"original", "png-named-jpg"}
    assert scores(data, "original")["png-named-jpg"] >= SAME


@pytest.mark.parametrize(("image_id", "case"), list(BAD_FILES.items()))
def test_decode_refuses_bad_bytes_with_image_error(image_id, case):
    _, make, reason = case
    jpeg, png = encoded(photo(), "JPEG"), encoded(photo(), "PNG")
    with pytest.raises(ImageError, match=None) as err:
        decode(make(jpeg, png), 250_000_000)
    assert reason in str(err.value), image_id


# -- decompression bombs and huge pictures -----------------------------------------------------

BOMBS = {
    "png-100k": png_raw(100_000, 100_000, 8, 2, zlib.compress(bytes(301 * 4))),
    "jpeg-65k": jpeg_declaring(65_000, 65_000),
    "png-2g": png_raw(2**31 - 1, 2**31 - 1, 1, 0, zlib.compress(bytes(64))),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_decompression_bomb_refused_from_its_header(name):
    data = BOMBS[name]
    assert len(data) < 5000  # a small file declaring billions of pixels
    with pytest.raises(ImageError, match=r"image too large: .* > limit 250000000 "
                                         r"\(possible decompression bomb\)"):
        decode(data, 250_000_000)


def test_pixel_limit_is_configurable_in_a_run(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    photo(1, (1000, 1000)).save(src / "one-megapixel.png")
    photo(1, (1001, 1000)).save(src / "just-over.png")
    (src / "bomb.png").write_bytes(BOMBS["png-100k"])
    monkeypatch.setenv("NPIMAGE_MAX_PIXELS", "1000000")
    run(tmp_path / "data", src)
    got = rejects(tmp_path / "data")
    assert set(got) == {"just-over", "bomb"}
    assert "1001x1000 = 1001000 pixels > limit 1000000" in got["just-over"][1]
    assert set(signed(tmp_path / "data")) == {"one-megapixel"}


def test_pillow_global_limit_does_not_refuse_valid_pictures_under_ours():
    """Pillow alone refuses > 89 Mpx (2 x for an error); our limit is what counts."""
    data = jpeg_declaring(12_000, 9_000)  # 108 Mpx declared; the pixel data is short
    try:
        got = decode(data, 250_000_000)
    except ImageError as exc:  # a truncation error is fine here, a size refusal is not
        assert "too large" not in str(exc)
    else:
        assert (got.width, got.height) == (12_000, 9_000)
    with pytest.raises(ImageError, match="too large"):
        decode(data, 100_000_000)


# Peak RSS from /proc (VmHWM, per address space): getrusage's ru_maxrss survives exec
# on Linux and would report the parent's (pytest's) peak.
_PEAK_SCRIPT = """
import json, sys
from pathlib import Path
from npimage.ingest.signatures import compute_batch

def peak_mib():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(ln.split()[1]) for ln in status if ln.startswith("VmHWM:")) / 1024

out = Path(sys.argv[2])

def sign(batch, name):
    compute_batch(Path(batch), None, out / f"{name}.parquet", out / f"{name}-rej.parquet",
                  extractor=None, max_pixels=250_000_000, read_timeout=60)

sign(sys.argv[3], "warm")  # a small picture first: the fixed costs (Numba's ~65 MB...)
base = peak_mib()
sign(sys.argv[1], "sig")
print(json.dumps({"base_mib": base, "peak_mib": peak_mib()}))
"""


def _batch(path: Path, uris: list[Path]) -> Path:
    n = len(uris)
    table = pa.table({"client_id": [CLIENT] * n, "image_id": [u.stem for u in uris],
                      "product_id": [u.stem for u in uris], "reference": [None] * n,
                      "uri": [str(u) for u in uris], "size_bytes": [None] * n,
                      "modified_at": [None] * n}).cast(CATALOG)
    pq.write_table(table, path)
    return path


def _peak_rss(tmp: Path, picture: Path) -> tuple[float, float, dict]:
    """(base, peak) RSS in MiB of a fresh process computing the picture's signature, the
    base taken after it computed a small picture's (what every process pays once: the
    libraries' first calls, Numba's registries and kernels, ~65 MB, are not the picture's)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc/self/status (Linux only)")
    out = tmp / picture.stem
    out.mkdir()
    small = out / "small.jpg"
    Image.linear_gradient("L").convert("RGB").save(small)
    batch = _batch(out / "batch.parquet", [picture])
    warm = _batch(out / "warm.parquet", [small])
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(batch), str(out), str(warm)],
                          capture_output=True, text=True, check=True, timeout=120)
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = pq.read_table(out / "sig.parquet").to_pylist()
    assert pq.read_metadata(out / "sig-rej.parquet").num_rows == 0
    assert pq.read_metadata(out / "warm-rej.parquet").num_rows == 0
    return mem["base_mib"], mem["peak_mib"], rows[0]


@pytest.fixture(scope="module")
def huge_pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 12 000 x 9 000 photo (108 Mpx) as JPEG and as PNG."""
    root = tmp_path_factory.mktemp("huge")
    img = Image.linear_gradient("L").resize((12_000, 9_000)).convert("RGB")
    ImageDraw.Draw(img).ellipse((2000, 1500, 10000, 7500), fill=(200, 30, 30))
    paths = {"jpeg": root / "huge.jpg", "png": root / "huge.png"}
    img.save(paths["jpeg"], quality=70)
    img.save(paths["png"], compress_level=1)
    return paths


def test_huge_jpeg_decodes_in_draft_mode_with_bounded_memory(huge_pictures, tmp_path):
    base, peak, row = _peak_rss(tmp_path, huge_pictures["jpeg"])
    assert (row["width"], row["height"]) == (12_000, 9_000)
    full_decode_mib = 12_000 * 9_000 * 3 / 2**20  # 309 MiB for the RGB pixels alone
    assert peak - base < full_decode_mib / 4, (base, peak)


def test_huge_png_is_decoded_once_and_reduced_before_conversion(huge_pictures, tmp_path):
    """PNG has no draft mode: one full decode (bounded by max_pixels), never two copies."""
    base, peak, row = _peak_rss(tmp_path, huge_pictures["png"])
    assert (row["width"], row["height"]) == (12_000, 9_000)
    full_decode_mib = 12_000 * 9_000 * 3 / 2**20
    assert peak - base < 1.6 * full_decode_mib, (base, peak)


# -- every pixel mode, bit depth, frame and orientation is the same image ---------------------

def _alpha_cases(img: Image.Image) -> dict[str, tuple[Image.Image, str]]:
    return {f"{m}-transparent": (transparent(img, m), "PNG" if m != "PA" else "TIFF")
            for m in ("LA", "RGBA", "PA")}


def _mode_files(src: Path, img: Image.Image) -> list[str]:
    """The photo in every pixel mode (and a few formats); returns the image ids."""
    grey = np.asarray(img.convert("L"))
    pictures: dict[str, tuple[Image.Image, str]] = {
        mode: (img.convert(mode) if mode not in ("I;16", "I", "F") else
               Image.fromarray(grey.astype({"I;16": np.uint16, "I": np.int32,
                                            "F": np.float32}[mode])), "TIFF")
        for mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I",
                     "F", "LAB")
    }
    pictures["I;16-full-range"] = (Image.fromarray(grey.astype(np.uint16) * 257),
                                   "TIFF")
    pictures["F-unit-range"] = (Image.fromarray(grey.astype(np.float32) / 255), "TIFF")
    pictures["CMYK-jpeg"] = (img.convert("CMYK"), "JPEG")
    pictures["P-gif"] = (img.convert("P"), "GIF")
    pictures["RGB-webp"] = (img, "WEBP")
    pictures["RGB-bmp"] = (img, "BMP")
    pictures.update(_alpha_cases(img))
    ext = {"TIFF": "tif", "PNG": "png", "JPEG": "jpg", "GIF": "gif", "WEBP": "webp",
           "BMP": "bmp"}
    for name, (picture, fmt) in pictures.items():
        picture.save(src / f"{name}.{ext[fmt]}", fmt)
    rgb16 = np.asarray(img).astype(np.uint16) * 257
    (src / "RGB-16bit.png").write_bytes(png16(rgb16))
    (src / "L-16bit.png").write_bytes(png16(grey.astype(np.uint16) * 257))
    return [*pictures, "RGB-16bit", "L-16bit"]


def _orientation_files(src: Path, img: Image.Image) -> list[str]:
    """The photo stored rotated/flipped with the EXIF orientation that shows it upright."""
    stored_as = {  # orientation -> how the pixels are stored so that it displays upright
        2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    for value, method in stored_as.items():
        exif = Image.Exif()
        exif[0x0112] = value
        img.transpose(method).save(src / f"orientation-{value}.jpg", quality=92, exif=exif)
    img.transpose(Image.Transpose.ROTATE_90).save(src / "rotated-no-tag.jpg", quality=92)
    return [f"orientation-{v}" for v in stored_as]


def _animation_files(src: Path, img: Image.Image) -> list[str]:
    """Animated GIF and WebP whose first frame is the photo and later frames differ."""
    frames = [img, photo(11), photo(12)]
    frames[0].save(src / "animated.gif", save_all=True, append_images=frames[1:],
                   duration=100, loop=0)
    frames[0].save(src / "animated.webp", save_all=True, append_images=frames[1:],
                   duration=100, quality=90)
    frames[1].save(src / "second-frame.png")
    return ["animated", "animated-webp"]


@pytest.fixture(scope="module")
def same_image_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One photo in every mode, depth, frame and orientation; one pipeline run."""
    root = tmp_path_factory.mktemp("same")
    src = root / "catalogue"
    src.mkdir()
    img = photo()
    img.save(src / "original.png")
    ids = {"modes": _mode_files(src, img), "orientation": _orientation_files(src, img),
           "animation": _animation_files(src, img)}
    (src / "animated.webp").rename(src / "animated-webp.webp")
    info = run(root / "data", src)
    return root / "data", {"ids": ids, "info": info}


def test_run_has_no_rejects(same_image_run):
    data, meta = same_image_run
    assert rejects(data) == {}
    assert meta["info"]["rejects"] == 0


def test_every_pixel_mode_and_16_bit_is_the_same_image(same_image_run):
    data, meta = same_image_run
    got = scores(data, "original")
    low = {i: got.get(i) for i in meta["ids"]["modes"] if got.get(i, 0) < SAME}
    assert not low, low


def test_exif_orientation_is_applied(same_image_run):
    data, meta = same_image_run
    got = scores(data, "original")
    low = {i: got.get(i) for i in meta["ids"]["orientation"] if got.get(i, 0) < SAME}
    assert not low, low
    sizes = signed(data)
    assert all(sizes[i] == (640, 480) for i in meta["ids"]["orientation"]), sizes
    assert got.get("rotated-no-tag", 0) < SAME  # control: the rotation matters


def test_animations_use_their_first_frame(same_image_run):
    data, meta = same_image_run
    got = scores(data, "original")
    assert all(got.get(i, 0) >= SAME for i in meta["ids"]["animation"]), got
    assert got.get("second-frame", 0) < SAME  # control: other frames are other images


def test_transparency_is_composited_on_white():
    img = photo()
    assert img.getpixel((0, 0)) == (255, 255, 255)
    for mode in ("LA", "RGBA", "PA"):
        pic = decode(encoded(transparent(img, mode), "TIFF"), 10**9).rgb
        assert pic.getpixel((0, 0)) == (255, 255, 255), mode
    naive = transparent(img, "RGBA").convert("RGB")  # control: dropping alpha gives black
    assert naive.getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.datasets
def test_pdq_modes_dataset_matches_original(tmp_path):
    """../shared/datasets/pdq-edits/modes: one photo in many modes, all the same image."""
    modes = dataset("pdq-edits", "modes")
    run(tmp_path, modes)
    got = scores(tmp_path, "original")
    files = {p.stem for p in modes.iterdir() if p.stem != "original"}
    assert len(files) >= 13 and rejects(tmp_path) == {}
    low = {i: got.get(i) for i in files if got.get(i, 0) < SAME}
    assert not low, low


# -- reads: missing, unreadable, hanging, odd names ----------------------------------------

class HangingFileSystem(fsspec.AbstractFileSystem):
    """An fsspec file system whose reads never answer (until the test releases them)."""

    protocol = "npimagehang"
    release = threading.Event()

    def _open(self, path, mode="rb", **kwargs):
        self.release.wait(600)
        raise FileNotFoundError(path)


@pytest.fixture
def hanging_uri():
    fsspec.register_implementation(HangingFileSystem.protocol, HangingFileSystem,
                                   clobber=True)
    HangingFileSystem.release.clear()
    yield f"{HangingFileSystem.protocol}://server/never.jpg"
    HangingFileSystem.release.set()


def test_unreadable_sources_are_rejected_and_never_hang(tmp_path, monkeypatch, hanging_uri):
    src = tmp_path / "src"
    src.mkdir()
    photo().save(src / "good.jpg")
    os.mkfifo(src / "fifo.jpg")  # nobody ever writes: a plain open() would block forever
    (src / "folder.jpg").mkdir()
    (src / "dangling.jpg").symlink_to(src / "gone.jpg")
    (src / "plain-file").write_text("x")
    rows = [("good", "p", "good.jpg"), ("missing", "p", "missing.jpg"),
            ("fifo", "p", "fifo.jpg"), ("folder", "p", "folder.jpg"),
            ("dangling", "p", "dangling.jpg"),
            ("not-a-dir", "p", "plain-file/x.jpg"), ("hangs", "p", hanging_uri),
            ("dev-zero", "p", "/dev/zero"), ("bad-scheme", "p", "nosuchscheme://x/y.jpg")]
    expected = {"missing": "file not found", "fifo": "not a regular file (a FIFO/named pipe)",
                "folder": "is a directory, not a file", "dangling": "file not found",
                "not-a-dir": "cannot read: Not a directory",
                "hangs": "read timed out after 1s",
                "dev-zero": "not a regular file (a character device)",
                "bad-scheme": "cannot read: Protocol not known: nosuchscheme"}
    if os.geteuid() != 0:  # root reads mode-000 files anyway
        (src / "secret.jpg").write_bytes(b"x")
        (src / "secret.jpg").chmod(0)
        rows.append(("secret", "p", "secret.jpg"))
        expected["secret"] = "permission denied"
    manifest = write_manifest(src / "manifest.csv", rows)
    monkeypatch.setenv("NPIMAGE_READ_TIMEOUT", "1")
    info = run(tmp_path / "data", manifest)
    got = {i: reason for i, (_, reason) in rejects(tmp_path / "data").items()}
    assert got == expected
    assert set(signed(tmp_path / "data")) == {"good"} and info["images"] == len(rows)


def test_symlink_loop_is_rejected_not_fatal(tmp_path):
    """NEEDS PATCH (extract.py): Path.resolve() raised RuntimeError on a loop: run failed."""
    src = tmp_path / "src"
    src.mkdir()
    photo().save(src / "good.jpg")
    (src / "loop.jpg").symlink_to(src / "loop.jpg")
    run(tmp_path / "folder", src)
    reason = "cannot read: Too many levels of symbolic links"
    assert rejects(tmp_path / "folder") == {"loop": ("signatures", reason)}
    manifest = write_manifest(tmp_path / "manifest.csv", [("good", "p", "src/good.jpg"),
                                                          ("loop", "p", "src/loop.jpg")])
    run(tmp_path / "manifest", manifest)
    assert rejects(tmp_path / "manifest") == {"loop": ("signatures", reason)}
    assert set(signed(tmp_path / "manifest")) == {"good"}


def test_abandoned_hanging_read_does_not_keep_the_process_alive(tmp_path):
    """A read that never returns is abandoned; the process still exits at once."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code = ("import fsspec, sys\n"
            "from npimage.ingest.decode import read_bytes, ImageError\n"
            "class Hang(fsspec.AbstractFileSystem):\n"
            "    def _open(self, path, mode='rb', **kw):\n"
            f"        open({str(fifo)!r}, 'rb')  # blocks: nobody writes\n"
            "fsspec.register_implementation('hang', Hang)\n"
            "try:\n    read_bytes('hang://x', 0.5)\n"
            "except ImageError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "read timed out after 0.5s"


def test_file_larger_than_the_byte_limit_is_refused_unread(tmp_path):
    big = tmp_path / "big.jpg"
    with big.open("wb") as fh:
        fh.truncate(MAX_BYTES + 1)  # sparse: takes no disk
    with pytest.raises(ImageError, match=rf"file too large: {MAX_BYTES + 1} bytes > limit"):
        read_bytes(str(big), 10)
    small = tmp_path / "small.jpg"
    small.write_bytes(bytes(1000))
    with pytest.raises(ImageError, match="file too large: 1000 bytes > limit 999"):
        read_bytes(str(small), 10, max_bytes=999)
    assert len(read_bytes(str(small), 10, max_bytes=1000)) == 1000


def test_spaces_and_non_ascii_names(tmp_path):
    src = tmp_path / "Catalogue été 2026"
    src.mkdir()
    img = photo()
    names = ["Photo été 01.jpg", "商品 画像.png", "naïve café (copie).webp",
             "266846 07640161680229_PIECE_01.jpg"]
    for name in names:
        img.save(src / name)
    run(tmp_path / "data", src)
    ids = set(signed(tmp_path / "data"))
    assert ids == {Path(n).stem for n in names}
    got = scores(tmp_path / "data", "Photo été 01")
    assert all(got.get(Path(n).stem, 0) >= SAME for n in names[1:]), got
    products = dict(query(tmp_path / "data", "SELECT image_id, product_id FROM images "
                                              "WHERE client_id = $c"))
    assert products["266846 07640161680229_PIECE_01"] == "07640161680229"
    # the same files through a manifest with relative and absolute URIs
    manifest = write_manifest(tmp_path / "manifest é.csv", [
        (f"m{i}", "p", f"Catalogue été 2026/{n}" if i % 2 else str(src / n))
        for i, n in enumerate(names)])
    run(tmp_path / "data2", manifest)
    assert rejects(tmp_path / "data2") == {}
    assert set(signed(tmp_path / "data2")) == {f"m{i}" for i in range(len(names))}


def test_file_name_that_is_not_utf8_is_rejected_not_fatal(tmp_path):
    """NEEDS PATCH (extract.py): a byte name like b'caf\\xe9.jpg' crashed extract."""
    src = tmp_path / "src"
    src.mkdir()
    photo().save(src / "good.jpg")
    photo().save(os.fsencode(src) + b"/caf\xe9.jpg")
    run(tmp_path / "data", src)
    got = rejects(tmp_path / "data")
    assert set(signed(tmp_path / "data")) == {"good"}
    [(image_id, (stage, reason))] = got.items()
    assert stage == "extract" and "not valid UTF-8" in reason
    assert image_id == "caf\ufffd.jpg"


# -- catalogue rules -------------------------------------------------------------------------

def test_duplicate_image_ids_keep_the_first_and_reject_the_others(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    photo(1).save(src / "a.jpg")
    photo(2).save(src / "a.png")  # same image_id "a" from the folder
    photo(3).save(src / "b.jpg")
    manifest = write_manifest(tmp_path / "manifest.csv", [
        ("x", "p1", "src/a.jpg"), ("x", "p2", "src/b.jpg"), ("y", "p3", "src/b.jpg"),
        ("no-image", "p4", ""), ("", "p5", "src/a.jpg")])
    run(tmp_path / "folder", src)
    got = rejects(tmp_path / "folder")
    assert got == {"a": ("extract", "duplicate image_id: the first occurrence is kept")}
    uris = dict(query(tmp_path / "folder", "SELECT image_id, uri FROM images "
                                           "WHERE client_id = $c"))
    assert uris["a"].endswith("a.jpg")  # files are walked in name order: a.jpg first
    run(tmp_path / "manifest", manifest)
    got = rejects(tmp_path / "manifest")
    assert got["x"] == ("extract", "duplicate image_id: the first occurrence is kept")
    assert got["no-image"] == ("extract", "manifest line 5: empty uri")
    assert got["<line 6>"] == ("extract", "manifest line 6: empty image_id")
    assert set(signed(tmp_path / "manifest")) == {"x", "y"}
    product = dict(query(tmp_path / "manifest",
                         "SELECT image_id, product_id FROM images WHERE client_id = $c"))
    assert product == {"x": "p1", "y": "p3"}


def test_manifest_that_is_not_utf8_stops_with_a_clear_error(tmp_path):
    """NEEDS PATCH (extract.py): said only "'utf-8' codec can't decode byte 0xe9 ..."."""
    photo().save(tmp_path / "café.jpg")
    manifest = tmp_path / "latin1.csv"
    manifest.write_bytes("image_id,product_id,uri\ncafé,p,café.jpg\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"manifest .*latin1\.csv is not UTF-8 text .*save "
                                         r"it as UTF-8"):
        run(tmp_path / "data", manifest)
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()


def test_manifest_without_required_columns_stops_before_writing(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,uri\n1,a.jpg\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['image_id', 'product_id'\]"):
        run(tmp_path / "data", bad)
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()
