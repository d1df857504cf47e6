"""Read image bytes and decode them once into a normalised RGB picture.

Every later step (hashes, feature vectors, thumbnails) works from the single `Decoded`
image made here, so an image is read and decoded exactly once per run. Normalisation
makes the same photo stored in another mode, format or orientation give the same pixels:
EXIF orientation applied, first frame of animations, transparency composited on white
(product photos are shot on white), 16-bit, 32-bit and float data scaled to 8 bits.

Hostile input is refused with an `ImageError` whose message is the reason stored in
`rejects`, never with a crash or a hang (docs/RELIABILITY.md lists every case):
- reads: only regular files (a FIFO, device or directory is refused before any read,
  so it cannot block), at most `max_bytes`, given up after `timeout` seconds;
- formats: only the web and catalogue formats in `FORMATS` are even tried, so a file
  named .jpg that holds EPS, PDF, PSD or HTML never reaches another decoder;
- size: the pixel count declared in the header is checked before any pixel is decoded
  (decompression bombs); JPEGs are decoded at a reduced scale (draft mode) and other
  large pictures are reduced right after decoding, before any mode conversion.

Decoded to the size the consumers need, never more: a JPEG is decoded at the smallest DCT
scale (1/2, 1/4, 1/8) that keeps its long side at least DRAFT_SIZE (= WORK_SIZE), and only
a working copy still longer than WORK_SIZE is resampled, from that reduced decode (a
1600 px JPEG: decoded at 1/2, 800 -> 512 px, never LANCZOS over the full picture), by
`resample.fit_lanczos` (Pillow's thumbnail to the byte, about twice as fast).
"""

from __future__ import annotations

import codecs
import io
import os
import queue
import stat
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, UnidentifiedImageError

from npimage.ingest.resample import fit_lanczos

#: Longest side of the working picture: plenty for 8x8/32x32 hashes and 224x224 FV input.
WORK_SIZE = 512
#: Long side a JPEG keeps at least when decoded at a reduced DCT scale (draft mode). The
#: largest consumer (report thumbnail 240 px, FV 224 px after a pad-fit, detail signature
#: 128 px of the content box) would be served by less, but the working copy stays what
#: every other format gets (LANCZOS to WORK_SIZE from at least WORK_SIZE): a JPEG and its
#: PNG copy must give the same detail signature (a 1/4-scale decode used as it is moved
#: the detail by 1.4 levels on average and cost 3 of 24 format copies their `same`).
DRAFT_SIZE = WORK_SIZE

Image.init()
#: The only formats tried: what catalogues and browsers use (AVIF where Pillow has it).
#: Pillow knows ~40 more (EPS would run Ghostscript...): a file in any of them is refused.
FORMATS = tuple(f for f in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
                if f in Image.OPEN)

#: Largest file read (bytes). A bigger file is refused before it is read into memory.
MAX_BYTES = 1 << 30
#: Bytes asked for per read from a remote file system (the cap is checked between reads).
READ_CHUNK = 1 << 20
#: Pixels per strip when a large picture is converted and reduced strip by strip.
STRIP_PIXELS = 1 << 20

#: Pillow keeps its decompression-bomb limit in a process global (89 Mpx, an error at
#: twice that), which would refuse valid pictures below npimage's configurable
#: `max_pixels`. decode() checks the header against `max_pixels` itself; Pillow's check is
#: switched off only while Image.open reads one header, under this lock, and restored
#: afterwards: other users of Pillow in the process keep their own setting.
_PILLOW_LIMIT = threading.Lock()

_ORIENTATION = 0x0112  # EXIF tag
#: EXIF orientation -> the transposition that shows the picture upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Modes that Image.reduce handles; others are converted before being reduced.
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F"})
_HIGH_DEPTH = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: File signatures, to name what a refused or broken file holds in its reject reason.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"),
    (b"%PDF", "PDF"), (b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "Photoshop PSD"), (b"\x00\x00\x01\x00", "ICO"), (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"), (b"BM", "BMP"), (b"PK\x03\x04", "ZIP"), (b"\x1f\x8b", "gzip"),
)


class ImageError(Exception):
    """An image that cannot be used; the message is the reason stored in `rejects`."""


@dataclass(frozen=True)
class Decoded:
    """A decoded picture: original dimensions (as displayed) and the RGB working copy."""

    width: int
    height: int
    rgb: Image.Image


# -- reading -----------------------------------------------------------------------------

def _read_local(path: str, max_bytes: int) -> bytes:
    """Bytes of a local regular file; anything else is refused without blocking.

    O_NONBLOCK makes opening a FIFO return at once (a plain open would wait for a
    writer forever); fstat then refuses every non-regular file before a read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError("is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"not a regular file ({_file_kind(st.st_mode)})")
        if st.st_size > max_bytes:
            raise ImageError(f"file too large: {st.st_size} bytes > limit {max_bytes}")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew since fstat
        raise ImageError(f"file too large: more than {max_bytes} bytes")
    return data


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO/named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _read(uri: str, max_bytes: int) -> bytes:
    """Bytes behind a path or URL, at most `max_bytes` (more is refused, never kept).

    Every URL that names the local file system (`file://`, `local://`, ...) goes through
    `_read_local`, so a device or FIFO is refused whatever the spelling; other file
    systems are read in chunks and refused as soon as they pass the cap.
    """
    if "://" not in uri:
        return _read_local(uri, max_bytes)
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        return _read_local(path, max_bytes)
    chunks: list[bytes] = []
    total = 0
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(min(READ_CHUNK, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ImageError(f"file too large: more than {max_bytes} bytes")
    return b"".join(chunks)


def _read_error(exc: BaseException) -> ImageError:
    """The reject reason of an exception raised while reading."""
    if isinstance(exc, ImageError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return ImageError("file not found")
    if isinstance(exc, IsADirectoryError):
        return ImageError("is a directory, not a file")
    if isinstance(exc, PermissionError):
        return ImageError("permission denied")
    if isinstance(exc, OSError):
        return ImageError(f"cannot read: {exc.strerror or exc}")
    if isinstance(exc, ImportError):
        return ImageError(f"cannot read: no file system installed for this URI ({exc})")
    if isinstance(exc, ValueError):
        return ImageError(f"cannot read: {exc}")
    return ImageError(f"cannot read: {type(exc).__name__}: {exc}")


def read_bytes(uri: str, timeout: float, max_bytes: int = MAX_BYTES) -> bytes:
    """Read all bytes behind `uri` (path or fsspec URL), giving up after `timeout` seconds.

    The read runs in a daemon thread: a read that never returns (a hung network mount or
    server) is abandoned, costs one idle thread, and never keeps the process from exiting.
    """
    data: list[bytes] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            data.append(_read(uri, max_bytes))
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=work, name="npimage-read", daemon=True).start()
    if not done.wait(timeout):
        raise ImageError(f"read timed out after {timeout:g}s")
    if errors:
        raise _read_error(errors[0]) from errors[0]
    return data[0]


#: Files a batch reader reads ahead of the one being decoded.
READ_AHEAD = 8


def read_all(uris: Sequence[str], timeout: float,
             max_bytes: int = MAX_BYTES) -> Iterator[bytes | ImageError]:
    """The bytes of each of `uris` in order, or the ImageError of its read.

    One daemon thread reads ahead (at most READ_AHEAD files) while the caller decodes, so
    a batch pays no thread start and no wake-up per file (`read_bytes` starts one thread
    per file). The caller waits at most `timeout` seconds for any one file: a read still
    running then is abandoned with its thread (as in `read_bytes`) and a fresh reader
    takes the files after it. Leaving the loop early stops the reader.
    """
    pos = 0
    stop = threading.Event()
    try:
        while pos < len(uris):
            results: queue.Queue[tuple[int, bytes | ImageError]] = queue.Queue(READ_AHEAD)
            threading.Thread(target=_reader, args=(uris, pos, max_bytes, results, stop),
                             name="npimage-read", daemon=True).start()
            while pos < len(uris):
                try:
                    _, item = results.get(timeout=timeout)
                except queue.Empty:
                    pos += 1
                    yield ImageError(f"read timed out after {timeout:g}s")
                    break  # that reader is stuck: a new one reads the rest
                pos += 1
                yield item
    finally:
        stop.set()


def _reader(uris: Sequence[str], start: int, max_bytes: int,
            results: queue.Queue[tuple[int, bytes | ImageError]], stop: threading.Event) -> None:
    """Read uris[start:] in order into `results` until done or `stop` (see `read_all`)."""
    for i in range(start, len(uris)):
        try:
            item: bytes | ImageError = _read(uris[i], max_bytes)
        except BaseException as exc:  # handed to the caller as its reject reason
            item = _read_error(exc)
        while not stop.is_set():
            try:
                results.put((i, item), timeout=0.5)
                break
            except queue.Full:
                continue
        if stop.is_set():
            return


# -- pixels ------------------------------------------------------------------------------

def _to_8bit(img: Image.Image, top: float | None = None) -> Image.Image:
    """Scale 16/32-bit integer and float single-channel pictures into 8-bit grey.

    A file does not state which range its values use: 8-bit data kept in a 16-bit or
    32-bit container (what Pillow writes) is as common as data using the full range. The
    scale is the smallest usual range that holds the data: 1 (floats only), 255, 65535,
    else the maximum. `top` is the data's maximum when known (a strip of a larger
    picture is scaled by the maximum of the whole picture).
    """
    arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if top is None:
        top = float(arr.max()) if arr.size else 1.0
    limits = (1.0, 255.0, 65535.0) if img.mode == "F" else (255.0, 65535.0)
    top = next((lim for lim in limits if top <= lim), top)
    arr = np.clip(arr / top * 255.0, 0, 255)
    return Image.fromarray(arr.round().astype(np.uint8), mode="L")


def _on_white(img: Image.Image) -> Image.Image:
    """RGB of a picture with transparency, composited on white."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_rgb(img: Image.Image, top: float | None = None) -> Image.Image:
    """Normalise any Pillow mode into RGB, compositing transparency on white.

    An RGB picture is returned as a plain Image over the same pixels (Pillow's
    convert("RGB") would copy them: 0.6 ms for a 1600 px photo decoded at 800 px); the
    file's image object is not used after this.

    `top`: the maximum value of the whole picture when `img` is a strip of a
    high-depth one (see `_to_8bit`).
    """
    if img.mode == "RGB":  # what almost every JPEG is: its decoded pixels, not a copy
        return img if type(img) is Image.Image else img._new(img.im)
    if img.mode in _HIGH_DEPTH:
        img = _to_8bit(img, top)
    if img.mode in ("P", "PA", "LA", "La", "RGBA", "RGBa"):
        has_alpha = img.mode != "P" or "transparency" in img.info
        return _on_white(img) if has_alpha else img.convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"unsupported pixel mode {img.mode}") from exc


def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1..8); 1 when absent or unreadable (broken EXIF is not fatal)."""
    try:
        value = int(img.getexif().get(_ORIENTATION, 1))
    except Exception:  # corrupt EXIF: show the picture as stored
        return 1
    return value if value in _UPRIGHT else 1


def _reduce(img: Image.Image) -> Image.Image:
    """Shrink a large decoded picture by an integer box factor to about 2 x WORK_SIZE.

    Done before mode conversion so that the conversions work on the small copy. Modes
    that Image.reduce does not handle (palette, 16-bit, 1-bit...) are converted and
    reduced strip by strip: a full-size converted copy (4 bytes a pixel for RGBA, 8 for
    float64 scaling) never exists, only the decoded picture and one strip.
    """
    factor = min(img.size) // (WORK_SIZE * 2)
    if factor < 2:
        return img
    if img.mode in _REDUCIBLE:
        return img.reduce(factor)
    return _convert_reduced(img, factor)


def _convert_reduced(img: Image.Image, factor: int) -> Image.Image:
    """RGB of `img` reduced by `factor`, converted in horizontal strips."""
    width, height = img.size
    top = None
    if img.mode in _HIGH_DEPTH:  # single band: (min, max) of the whole picture
        high = img.getextrema()[1]
        top = float(high) if isinstance(high, int | float) else None
    rows = factor * max(1, STRIP_PIXELS // (width * factor))  # a multiple of factor
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for y in range(0, height, rows):
        strip = img.crop((0, y, width, min(height, y + rows)))
        out.paste(_to_rgb(strip, top).reduce(factor), (0, y // factor))
    return out


def _magic_name(data: bytes) -> str | None:
    """Format named by the file's first bytes, if they are a known signature."""
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _sniff(data: bytes) -> str:
    """A short description of what the bytes look like, for reject reasons."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "looks like HTML"
    if head.startswith((b"<?xml", b"<svg")):
        return "looks like XML/SVG"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"):
        return "looks like HEIC"
    name = _magic_name(data)
    if name:
        return f"looks like {name}"
    try:  # incremental: a character cut at byte 512 is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(data[:512], final=False)
    except UnicodeDecodeError:
        text = "\0"
    if "\0" not in text:
        return "looks like text"
    return f"starts with bytes {data[:8].hex()}"


@contextmanager
def _without_pillow_pixel_limit() -> Iterator[None]:
    """Pillow's own pixel limit off for the block only (see _PILLOW_LIMIT)."""
    with _PILLOW_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open `data` (header only) and refuse it when it declares too many pixels."""
    try:
        with _without_pillow_pixel_limit():
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as exc:
        kind = _sniff(data)
        known = kind.removeprefix("looks like ") in FORMATS
        reason = (f"corrupt or truncated {kind.removeprefix('looks like ')} ({len(data)} bytes)"
                  if known else f"not an image or unsupported format ({kind})")
        raise ImageError(reason) from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height} pixels "
            f"> limit {max_pixels} (possible decompression bomb)")
    return img


def draft_scale(width: int, height: int, need: int = DRAFT_SIZE) -> int:
    """The largest JPEG DCT reduction (8, 4, 2 or 1) that keeps the long side >= `need`."""
    return next(a for a in (8, 4, 2, 1) if max(width, height) // a >= need or a == 1)


def _decode_pixels(img: Image.Image) -> Image.Image:
    """Decode the first frame at a reduced scale where the format allows it.

    Pillow's draft picks the largest scale whose picture is at least the size asked for
    in both dimensions: asking for the size divided by `draft_scale` gets that scale
    whatever the aspect ratio (a square request would keep a wide picture at full size).
    """
    scale = draft_scale(*img.size)
    if scale > 1:  # JPEG only; a no-op elsewhere
        img.draft(None, (img.width // scale, img.height // scale))
    img.load()
    return _reduce(img)


def decode(data: bytes, max_pixels: int) -> Decoded:
    """Decode `data` into a `Decoded`; raise ImageError with a clear reason otherwise.

    The header is checked before any pixel is decoded, so a decompression bomb (a small
    file declaring a huge picture) is refused cheaply. Memory stays bounded for huge but
    valid pictures: JPEGs decode at 1/2..1/8 scale (draft mode), other formats decode
    once at full size (at most `max_pixels`) and are reduced before any conversion.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    width = height = 0
    img_format = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/palette chatter; real faults raise
            img = _open(data, max_pixels)
            img_format = img.format
            width, height = img.size
            orientation = _orientation(img)
            work = _to_rgb(_decode_pixels(img))
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError(f"out of memory decoding a {width}x{height} image") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError,
            TypeError, ZeroDivisionError) as exc:
        kind = img_format or _magic_name(data) or "image"
        raise ImageError(f"corrupt or truncated {kind}: {type(exc).__name__}: {exc}") from exc
    if orientation in _UPRIGHT:
        work = work.transpose(_UPRIGHT[orientation])
        if orientation >= 5:  # quarter turns: report the size as displayed
            width, height = height, width
    return Decoded(width=width, height=height, rgb=fit_lanczos(work, WORK_SIZE))



#: Long side of the picture the pack readers get (barcodes need their full resolution).
READ_SIZE = 3072


def decode_for_reading(data: bytes, max_pixels: int, max_side: int = READ_SIZE) -> Decoded:
    """Like `decode`, but at full resolution up to `max_side` pixels on the long side.

    The pack readers (npimage.reading) need the pixels of bars and small print, which the
    512-pixel working copy of `decode` has lost. Same checks, same orientation.
    """
    return _decode_full(data, max_pixels, max_side)[0]


def decode_both(data: bytes, max_pixels: int,
                max_side: int = READ_SIZE) -> tuple[Decoded, Decoded | ImageError]:
    """(`decode(data)`, `decode_for_reading(data)` or the ImageError of that one): the
    working copy and the pack readers' picture, decoded once when they can share it.

    They share it when the working copy's decode reduces nothing before its LANCZOS fit
    (no JPEG draft scale, no box reduction) and the readers' picture is the file's full
    size: the working copy is then that picture fitted into WORK_SIZE, the very pixels
    `decode` gives (tests/test_reading.py checks it). Otherwise (a JPEG of 1024 px or more,
    a huge picture) both are decoded, from the same bytes. Raises ImageError when the
    working copy cannot be made, as `decode` does.
    """
    try:
        full, fmt, (width, height) = _decode_full(data, max_pixels, max_side)
    except Exception as exc:  # the working copy may still decode: the readers only lose it
        return decode(data, max_pixels), exc if isinstance(exc, ImageError) else ImageError(
            f"cannot decode at full size: {type(exc).__name__}: {exc}")
    shared = ((fmt != "JPEG" or draft_scale(width, height) == 1)
              and min(width, height) // (WORK_SIZE * 2) < 2 and max(width, height) <= max_side)
    if not shared:
        return decode(data, max_pixels), full
    work = fit_lanczos(full.rgb, WORK_SIZE)
    return Decoded(width=full.width, height=full.height, rgb=work), full


def _decode_full(data: bytes, max_pixels: int,
                 max_side: int) -> tuple[Decoded, str | None, tuple[int, int]]:
    """`decode_for_reading`'s picture, the file's format and its stored (w, h)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = _open(data, max_pixels)
            fmt, stored = img.format, img.size
            orientation = _orientation(img)
            img.draft(None, (max_side, max_side))
            img.load()
            work = _to_rgb(img)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
            ZeroDivisionError, MemoryError) as exc:
        raise ImageError(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from exc
    if orientation in _UPRIGHT:
        work = work.transpose(_UPRIGHT[orientation])
    work.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return Decoded(width=work.width, height=work.height, rgb=work), fmt, stored
