"""Pictures for the review pages: the full-size file, a difference overlay, which to keep.

Every picture is read with `decode.read_bytes` and decoded with `decode.decode` (EXIF
orientation applied, any pixel mode to RGB, bombs refused), the same path as the run's,
so what the reviewer sees is what was compared. Difference and sharpness are computed on
the two working copies (at most 512 px) resized to one common size, with NumPy.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from npimage.ingest import decode

#: Formats every browser shows as they are; others are served converted to PNG.
WEB_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
               "WEBP": "image/webp"}
#: Formats that lose nothing: an original of the same size is preferred to a JPEG.
LOSSLESS = {"PNG", "TIFF", "BMP", "GIF"}
#: A per-pixel change (0..255, max over channels) larger than this counts as a difference.
DIFF_LEVEL = 24


@dataclass(frozen=True)
class Picture:
    """One decoded image: original bytes and format, size as displayed, working copy."""

    data: bytes
    format: str | None
    width: int
    height: int
    rgb: Image.Image


def load(uri: str, timeout: float = 30.0, max_pixels: int = 250_000_000) -> Picture:
    """Read and decode one image; raises decode.ImageError with the reason."""
    data = decode.read_bytes(uri, timeout)
    fmt = None
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
    except (OSError, ValueError):
        pass
    d = decode.decode(data, max_pixels)
    return Picture(data, fmt, d.width, d.height, d.rgb)


def web_bytes(pic: Picture, max_pixels: int = 250_000_000) -> tuple[bytes, str]:
    """(bytes, media type) a browser shows at full size: the file itself when it can."""
    if pic.format in WEB_FORMATS and pic.format != "GIF":
        return pic.data, WEB_FORMATS[pic.format]
    img = Image.open(io.BytesIO(pic.data))
    img.thumbnail((4096, 4096))
    out = io.BytesIO()
    img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB").save(out, "PNG")
    return out.getvalue(), "image/png"


def common_pair(a: Picture, b: Picture) -> tuple[np.ndarray, np.ndarray]:
    """Both working copies as float arrays of one size (the smaller of the two)."""
    w = min(a.rgb.width, b.rgb.width)
    h = min(a.rgb.height, b.rgb.height)
    size = (max(w, 1), max(h, 1))
    pa = np.asarray(a.rgb.resize(size, Image.Resampling.LANCZOS), np.float32)
    pb = np.asarray(b.rgb.resize(size, Image.Resampling.LANCZOS), np.float32)
    return pa, pb


def difference(a: Picture, b: Picture) -> tuple[bytes, float]:
    """A PNG of picture A greyed and faded, with the pixels that differ from B in red.

    Returns (png bytes, share of pixels that differ). A pixel differs when its largest
    channel change exceeds DIFF_LEVEL; the red's strength follows the size of the change.
    """
    pa, pb = common_pair(a, b)
    change = np.abs(pa - pb).max(axis=2)
    grey = pa.mean(axis=2)
    base = 170 + grey * (85 / 255)  # faded: the picture stays readable under the marks
    strength = np.clip(change / 96, 0, 1) * (change > DIFF_LEVEL)
    out = np.stack([base + (255 - base) * strength, base * (1 - strength),
                    base * (1 - strength)], axis=2)
    buf = io.BytesIO()
    Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(buf, "PNG", optimize=False)
    return buf.getvalue(), float((change > DIFF_LEVEL).mean())


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey picture: higher is sharper (at equal size)."""
    g = rgb.mean(axis=2)
    lap = (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1])
    return float(lap.var()) if lap.size else 0.0


@dataclass(frozen=True)
class Suggestion:
    """Which of two images to keep, and why in words."""

    keep: str  # "a" or "b"
    reason: str


def suggest_keep(a: Picture, b: Picture) -> Suggestion:
    """Keep the larger picture (pixels, by 10 % or more); else the sharper (Laplacian
    variance at a common size, by 20 % or more); else a lossless original over a JPEG;
    else the larger file (less compressed)."""
    area_a, area_b = a.width * a.height, b.width * b.height
    if max(area_a, area_b) >= 1.1 * min(area_a, area_b):
        big = "a" if area_a > area_b else "b"
        return Suggestion(big, f"largest: {a.width}×{a.height} vs {b.width}×{b.height} px"
                          if big == "a" else
                          f"largest: {b.width}×{b.height} vs {a.width}×{a.height} px")
    sa, sb = (sharpness(x) for x in common_pair(a, b))
    if max(sa, sb) >= 1.2 * max(min(sa, sb), 1e-9):
        sharp = "a" if sa > sb else "b"
        hi, lo = (sa, sb) if sharp == "a" else (sb, sa)
        return Suggestion(sharp, f"sharpest: detail (Laplacian variance) {hi:.0f} vs {lo:.0f} "
                                 "at the same size")
    la, lb = a.format in LOSSLESS, b.format in LOSSLESS
    if la != lb:
        return Suggestion("a" if la else "b",
                          f"original format: {(a if la else b).format} loses nothing, "
                          f"{(b if la else a).format} is compressed")
    keep = "a" if len(a.data) >= len(b.data) else "b"
    return Suggestion(keep, "same size and sharpness: the larger file "
                            f"({max(len(a.data), len(b.data))} bytes) is the least compressed")
