"""The local-detail signature: a small grey and colour picture of an image's content box.

Computed once per image by the signature stage and stored in the `detail` column; the
verify stage (`npimage.matching.verify`) compares two of them region by region.

Layout (DETAIL_BYTES): a version byte, a DETAIL_SIDE x DETAIL_SIDE luma thumbnail, then
CHROMA_SIDE x CHROMA_SIDE Cb and Cr thumbnails (uint8, squashed to a square like the
hashes), then the content box as 4 uint8 shares of the frame. A stored signature of
another version is recomputed by the next run (`is_current`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

#: Side of the grey detail thumbnail (pixels) and of the chroma thumbnail.
DETAIL_SIDE = 128
CHROMA_SIDE = 32
#: Version of the detail signature (its first byte): stored signatures of another version
#: are recomputed by the next run.
DETAIL_VERSION = 1
#: Bytes: version, luma, Cb, Cr, content box (4 x uint8 shares of the frame).
DETAIL_BYTES = 1 + DETAIL_SIDE * DETAIL_SIDE + 2 * CHROMA_SIDE * CHROMA_SIDE + 4


def is_current(detail: bytes | None) -> bool:
    """Is this a detail signature of the current version?"""
    return detail is not None and len(detail) == DETAIL_BYTES and detail[0] == DETAIL_VERSION


#: A pixel is content when it differs by more than this from the backdrop of its row and
#: of its column (the picture's border pixels); rows/columns need CONTENT_SHARE of them.
BACKDROP_TOLERANCE = 24
CONTENT_SHARE = 0.01
#: Margin kept around the content box, as a share of its size.
BOX_MARGIN = 0.02


def content_box(rgb: Image.Image) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of what stands out from the backdrop (margins dropped).

    The backdrop of a row is the mean of its two end pixels, of a column its two end pixels
    (a studio gradient or plain white); a pixel far from both is content. A picture without
    a backdrop (a photo) keeps its whole frame.
    """
    small = rgb.copy()
    small.thumbnail((160, 160), Image.Resampling.BOX)
    a = np.asarray(small, dtype=np.int16)
    h, w = a.shape[:2]
    rows = (a[:, :2].mean(axis=1) + a[:, -2:].mean(axis=1)) / 2
    cols = (a[:2].mean(axis=0) + a[-2:].mean(axis=0)) / 2
    far = ((np.abs(a - rows[:, None]).max(-1) > BACKDROP_TOLERANCE)
           & (np.abs(a - cols[None]).max(-1) > BACKDROP_TOLERANCE))
    ys = np.flatnonzero(far.mean(axis=1) > CONTENT_SHARE)
    xs = np.flatnonzero(far.mean(axis=0) > CONTENT_SHARE)
    if len(ys) < h * 0.1 or len(xs) < w * 0.1:
        return (0, 0, rgb.width, rgb.height)
    my, mx = BOX_MARGIN * (ys[-1] - ys[0] + 1), BOX_MARGIN * (xs[-1] - xs[0] + 1)
    sx, sy = rgb.width / w, rgb.height / h
    return (max(0, int((xs[0] - mx) * sx)), max(0, int((ys[0] - my) * sy)),
            min(rgb.width, int(np.ceil((xs[-1] + 1 + mx) * sx))),
            min(rgb.height, int(np.ceil((ys[-1] + 1 + my) * sy))))


def detail_signature(rgb: Image.Image) -> bytes:
    """Luma thumbnail (DETAIL_SIDE^2) then Cb and Cr thumbnails (CHROMA_SIDE^2 each), uint8,
    of the content box (so a pack fills the thumbnail whatever its margins)."""
    box = content_box(rgb)
    ycc = rgb.crop(box).convert("YCbCr")
    y = ycc.getchannel(0).resize((DETAIL_SIDE, DETAIL_SIDE), Image.Resampling.BOX)
    c = ycc.resize((CHROMA_SIDE, CHROMA_SIDE), Image.Resampling.BOX)
    cb, cr = c.getchannel(1), c.getchannel(2)
    frac = np.array([box[0] / rgb.width, box[1] / rgb.height, box[2] / rgb.width,
                     box[3] / rgb.height])
    box_bytes = np.round(frac * 255).astype(np.uint8).tobytes()
    return bytes([DETAIL_VERSION]) + y.tobytes() + cb.tobytes() + cr.tobytes() + box_bytes


def content_boxes(details: Sequence[bytes]) -> np.ndarray:
    """(n, 4) float32: the content box (left, top, right, bottom) as shares of the frame."""
    raw = np.frombuffer(b"".join(details), np.uint8).reshape(len(details), DETAIL_BYTES)
    return raw[:, -4:].astype(np.float32) / 255


def unpack_details(details: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(grey (n, S, S) uint8, chroma (n, C, C, 2) uint8) from stored detail signatures."""
    raw = np.frombuffer(b"".join(details), np.uint8).reshape(len(details), DETAIL_BYTES)[:, 1:]
    g = DETAIL_SIDE * DETAIL_SIDE
    grey = raw[:, :g].reshape(-1, DETAIL_SIDE, DETAIL_SIDE)
    c = CHROMA_SIDE * CHROMA_SIDE
    chroma = np.stack([raw[:, g:g + c], raw[:, g + c:g + 2 * c]], axis=-1).reshape(
        -1, CHROMA_SIDE, CHROMA_SIDE, 2)
    return grey, chroma
