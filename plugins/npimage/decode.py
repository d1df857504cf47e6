"""Read image bytes and decode them once into a normalised RGB picture.

Every later step (hashes, feature vectors, thumbnails) works from the single `Decoded`
image made here, so an image is read and decoded exactly once per run. Normalisation
makes the same photo stored in another mode, format or orientation give the same pixels:
EXIF orientation applied, first frame of animations, transparency composited on white
(product photos are shot on white), 16-bit and float data scaled to 8 bits.
"""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
from PIL import Image, ImageOps

#: Longest side of the working picture: plenty for 8x8/32x32 hashes and 224x224 FV input.
WORK_SIZE = 512

_ORIENTATION = 0x0112  # EXIF tag
_READER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="npimage-read")


class ImageError(Exception):
    """An image that cannot be used; the message is the reason stored in `rejects`."""


@dataclass(frozen=True)
class Decoded:
    """A decoded picture: original dimensions and the normalised RGB working copy."""

    width: int
    height: int
    rgb: Image.Image


def _read(uri: str) -> bytes:
    if "://" in uri and not uri.startswith("file://"):
        with fsspec.open(uri, "rb") as fh:
            return fh.read()
    return Path(uri.removeprefix("file://")).read_bytes()


def read_bytes(uri: str, timeout: float) -> bytes:
    """Read all bytes behind `uri` (path or fsspec URL), giving up after `timeout` seconds."""
    future = _READER.submit(_read, uri)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout as exc:
        future.cancel()
        raise ImageError(f"read timed out after {timeout:g}s") from exc
    except FileNotFoundError as exc:
        raise ImageError("file not found") from exc
    except IsADirectoryError as exc:
        raise ImageError("is a directory, not a file") from exc
    except PermissionError as exc:
        raise ImageError("permission denied") from exc
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from exc


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float single-channel pictures into 8-bit grey."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
    else:
        top = 65535.0 if arr.size and arr.max() > 255 else 255.0
    arr = np.clip(np.nan_to_num(arr) / top * 255.0, 0, 255)
    return Image.fromarray(arr.round().astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any Pillow mode into RGB, compositing transparency on white."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _to_8bit(img)
    if img.mode == "P" or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode(data: bytes, max_pixels: int) -> Decoded:
    """Decode `data` into a `Decoded`; raise ImageError with a clear reason otherwise.

    The header is checked before any pixel is decoded, so a decompression bomb (a small
    file declaring a huge picture) is refused cheaply. Large JPEGs are decoded at a
    reduced scale (draft mode), which bounds memory for huge but valid pictures.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image too large: {width}x{height} = {width * height} pixels "
                    f"> limit {max_pixels} (possible decompression bomb)"
                )
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width  # reported as displayed, after rotation
            img.draft("RGB", (WORK_SIZE * 2, WORK_SIZE * 2))
            img = ImageOps.exif_transpose(img)
            img.load()
    except ImageError:
        raise
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"not an image or unsupported format ({_sniff(data)})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from exc
    rgb = _to_rgb(img)
    rgb.thumbnail((WORK_SIZE, WORK_SIZE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return Decoded(width=width, height=height, rgb=rgb)


def _sniff(data: bytes) -> str:
    """A short description of what the bytes look like, for reject reasons."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "looks like HTML"
    if head.startswith((b"<?xml", b"<svg")):
        return "looks like XML/SVG"
    if head.startswith(b"%pdf"):
        return "looks like PDF"
    try:
        data[:512].decode("utf-8")
        return "looks like text"
    except UnicodeDecodeError:
        return f"starts with bytes {data[:8].hex()}"
