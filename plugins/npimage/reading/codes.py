"""Barcodes and 2-D codes on a picture: EAN-13, UPC-A, EAN-8, ITF-14, GS1-128, DataMatrix, QR.

zxing-cpp finds and decodes the symbols; this module keeps, per symbol, its symbology,
decoded text, box and the GTIN it names. A GTIN is only ever given when its check digit
holds (linear retail codes, ITF-14, or AI 01 of a GS1 string or a GS1 Digital Link):
a wrong GTIN costs more than a missing one, so doubtful reads carry no GTIN and say why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import numpy as np

from npimage.reading.gtin import gtin_of_digital_link, gtin_of_gs1, to_gtin14

#: zxing-cpp format names -> our symbology names.
_SYMBOLOGY = {
    "EAN13": "EAN-13", "UPCA": "UPC-A", "EAN8": "EAN-8", "ITF": "ITF", "ITF14": "ITF",
    "Code128": "Code 128", "DataMatrix": "DataMatrix", "QRCode": "QR", "MicroQRCode": "QR",
}
_RETAIL = {"EAN-13", "UPC-A", "EAN-8"}


@dataclass(frozen=True)
class Code:
    """One symbol read on a picture."""

    symbology: str  # EAN-13 | UPC-A | EAN-8 | ITF-14 | GS1-128 | Code 128 | DataMatrix | QR
    text: str  # decoded text (GS1 strings in HRI form: (01)…(17)…)
    gtin: str | None  # GTIN-14, only when its check digit holds
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the picture read
    gs1: bool  # a GS1 element string (FNC1 first)
    note: str = ""  # why a code carries no GTIN

    def as_dict(self) -> dict[str, object]:
        x0, y0, x1, y1 = self.box
        return {"symbology": self.symbology, "text": self.text, "gtin": self.gtin,
                "x0": x0, "y0": y0, "x1": x1, "y1": y1, "gs1": self.gs1, "note": self.note}


@cache
def _formats() -> Any:
    import zxingcpp

    f = zxingcpp.BarcodeFormat
    return [f.EAN13, f.UPCA, f.EAN8, f.ITF, f.Code128, f.DataMatrix, f.QRCode, f.MicroQRCode]


def reader_version() -> str:
    """Identifies the decoder, so stored reads are redone when it changes."""
    from importlib.metadata import version

    return f"zxing-cpp {version('zxing-cpp')} +{READER_PASSES}"


def _box(position: Any) -> tuple[int, int, int, int]:
    pts = [(p.x, p.y) for p in (position.top_left, position.top_right,
                                position.bottom_right, position.bottom_left)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def interpret(symbology: str, text: str, gs1: bool) -> tuple[str, str | None, str]:
    """(symbology, GTIN-14 or None, note) of a decoded symbol, before any box is known."""
    if symbology in _RETAIL:
        gtin = to_gtin14(text)
        return symbology, gtin, "" if gtin else "check digit fails"
    if symbology == "ITF":
        if len(text) != 14:
            return "ITF", None, "not an ITF-14"
        gtin = to_gtin14(text)
        return "ITF-14", gtin, "" if gtin else "check digit fails"
    if symbology == "Code 128" and gs1:
        symbology = "GS1-128"
    if gs1 or text.startswith("(01)"):
        gtin = gtin_of_gs1(text)
        return symbology, gtin, "" if gtin else "no valid AI (01)"
    if symbology == "QR":
        gtin = gtin_of_digital_link(text)
        return symbology, gtin, "" if gtin else "no GTIN"
    return symbology, None, "no GTIN"


#: Pictures whose long side is at most this are also read upscaled when the first pass
#: finds nothing or only thin-barred codes: bars under ~2 pixels (small or downsized
#: packshots) often decode once interpolated.
UPSCALE_BELOW = 1600
#: Upscaled pictures stay under this long side (pixels).
UPSCALED_MAX = 3200


#: Names the passes read_codes makes besides zxing-cpp's own; part of reader_version().
READER_PASSES = "upscale,crops1,screen1"


def _decode(gray: np.ndarray, scale: float,
            origin: tuple[float, float] = (0.0, 0.0)) -> list[Code]:
    """Codes zxing-cpp decodes in gray, a picture's region scaled by scale from origin."""
    import zxingcpp

    found: dict[tuple[str, str], Code] = {}
    for r in zxingcpp.read_barcodes(np.ascontiguousarray(gray), formats=_formats()):
        if not r.valid or r.error:
            continue
        name = _SYMBOLOGY.get(r.format.name)
        if name is None:
            continue
        gs1 = r.content_type == zxingcpp.ContentType.GS1
        symbology, gtin, note = interpret(name, r.text, gs1)
        x0, y0, x1, y1 = _box(r.position)
        ox, oy = origin
        box = (round(x0 / scale + ox), round(y0 / scale + oy),
               round(x1 / scale + ox), round(y1 / scale + oy))
        found.setdefault((symbology, r.text), Code(symbology, r.text, gtin, box, gs1, note))
    return list(found.values())


#: Modules (narrow bars) per symbol width, to tell how many pixels a bar had.
_MODULES = {"EAN-13": 95, "UPC-A": 95, "EAN-8": 67, "ITF-14": 135}
#: Linear codes whose bars were thinner than this (pixels of the picture) are voted on.
THIN_BARS = 2.0
#: Resamplings (factor, OpenCV interpolation) a small picture is read at besides 1:1.
_RESAMPLINGS = ((2.0, "INTER_CUBIC"), (3.0, "INTER_LINEAR"), (4.0, "INTER_CUBIC"))


def _thin(code: Code) -> bool:
    """Whether a linear code's bars were thin (pixels of the picture)."""
    n = _MODULES.get(code.symbology)
    return n is not None and (code.box[2] - code.box[0]) / n < THIN_BARS


def _upscaled(gray: np.ndarray, factor: float, interpolation: str) -> np.ndarray:
    import cv2

    return cv2.resize(gray, None, fx=factor, fy=factor,
                      interpolation=getattr(cv2, interpolation))


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two boxes are at the same place, each widened by a quarter of its width.

    Linear codes' boxes are often flat (the scan line that decoded), at different heights
    of the same symbol from one resampling to the next: the margin makes them meet.
    """
    ma, mb = (a[2] - a[0]) / 4, (b[2] - b[0]) / 4
    return (a[0] - ma <= b[2] + mb and b[0] - mb <= a[2] + ma
            and a[1] - ma <= b[3] + mb and b[1] - mb <= a[3] + ma)


def _vote(runs: list[list[Code]]) -> list[Code]:
    """Codes of several resamplings of one picture; linear codes' GTINs by agreement.

    A check digit lets one misread in ten through, and at 1-2 pixels per bar misreads
    happen and even recur across resamplings (3 reads of a wrong text against 2 of the
    right one were seen on a 35 % thumbnail). A linear code keeps its GTIN only when at
    least two resamplings decode its text and no resampling decodes another text of its
    symbology at the same place; the others keep their text, without a GTIN.
    """
    reads = [c for run in runs for c in {(x.symbology, x.text): x for x in run}.values()]
    votes = Counter((c.symbology, c.text) for c in reads)
    first: dict[tuple[str, str], Code] = {}
    for c in reads:
        first.setdefault((c.symbology, c.text), c)
    out = []
    for key, c in first.items():
        if c.gtin and c.symbology in _MODULES:
            rivals = sum(1 for r in reads if r.symbology == c.symbology and r.text != c.text
                         and _overlap(r.box, c.box))
            if votes[key] < 2 or votes[key] <= 2 * rivals:
                c = replace(c, gtin=None, note=f"thin bars: {votes[key]} of {len(runs)} reads "
                            f"agree, {rivals} for another text")
        out.append(c)
    return out


#: Resamplings (factor, OpenCV interpolation, binarised by Otsu) of a barcode's crop.
#: Lanczos keeps 1-pixel bars apart where linear and cubic blur them; Otsu's threshold
#: then gives zxing-cpp clean edges. Measured on the demo after a 50 % resize (bench/reading.py).
_CROP_RESAMPLINGS = ((3.0, "INTER_LANCZOS4", True), (4.0, "INTER_LANCZOS4", True),
                     (6.0, "INTER_LANCZOS4", True), (6.0, "INTER_CUBIC", True),
                     (6.0, "INTER_LANCZOS4", False))
#: At most this many candidate regions per picture are read in the crop pass.
MAX_CROPS = 3
#: A crop is read at a resampling only while its upscaled long side stays under this
#: (pixels): wider regions have bars thick enough already, and the cost grows as its square.
CROP_MAX = 1600


def bar_regions(gray: np.ndarray, limit: int = MAX_CROPS) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) where a linear code probably is, the largest first.

    A barcode is where the gradient across the bars is strong and the one along them weak:
    |d/dx| - |d/dy| (bars upright) or its opposite (bars lying), smoothed, thresholded
    at 30 % of its peak, closed along the bars' direction; its connected regions at least
    three times longer across the bars than a bar is wide are the candidates.
    """
    import cv2

    f = gray.astype(np.float32)
    gx = np.abs(cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3))
    gy = np.abs(cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3))
    found: list[tuple[int, tuple[int, int, int, int]]] = []
    for d, kernel in ((gx - gy, (9, 3)), (gy - gx, (3, 9))):
        d = cv2.blur(np.clip(d, 0, None), (9, 9))
        peak = float(d.max())
        if peak <= 20:
            continue
        mask = (d > max(20.0, 0.3 * peak)).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE,
                                cv2.getStructuringElement(cv2.MORPH_RECT, kernel))
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        for x, y, w, h, area in stats[1:n]:
            across = w if kernel[0] > kernel[1] else h
            if across >= 24 and area >= 200:
                found.append((int(area), (int(x), int(y), int(x + w), int(y + h))))
    found.sort(key=lambda t: -t[0])
    return [box for _, box in found[:limit]]


def _crop_runs(gray: np.ndarray,
               near: tuple[int, int, int, int] | None = None) -> list[list[Code]]:
    """One list of codes per crop resampling, over every candidate region of the picture
    (those that meet the box `near`, when given: the screen's patch).

    Each region is widened (a quarter of its width, half its height), padded with the
    picture's light level so a code cut by the picture's edge gets a quiet zone back,
    then upscaled and, mostly, binarised by Otsu.
    """
    import cv2

    regions = bar_regions(gray)
    if near is not None:
        regions = [r for r in regions if _meets(r, near)]
    if not regions:
        return []
    light = int(np.percentile(gray, 95))
    crops = []
    for x0, y0, x1, y1 in regions:
        mx, my = max(8, (x1 - x0) // 4), max(4, (y1 - y0) // 2)
        cx, cy = max(0, x0 - mx), max(0, y0 - my)
        crop = gray[cy:y1 + my, cx:x1 + mx]
        pad = 20
        crops.append((cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_CONSTANT,
                                         value=light), (cx - pad, cy - pad)))
    runs = []
    for factor, interpolation, otsu in _CROP_RESAMPLINGS:
        run: list[Code] = []
        for crop, origin in crops:
            if max(crop.shape) * factor > CROP_MAX:
                continue
            up = _upscaled(crop, factor, interpolation)
            if otsu:
                up = cv2.threshold(up, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
            run += _decode(up, factor, origin)
        runs.append(run)
    return runs


#: The screen works on cells of SCREEN_CELL x SCREEN_CELL pixels, its statistics
#: averaged over SCREEN_SPAN x SCREEN_SPAN cells (15 pixels: a few bars of a thin code).
SCREEN_CELL, SCREEN_SPAN = 3, 5
#: Screen thresholds: orientation coherence of the gradient (1 = every edge parallel),
#: edges per pixel (mean |gradient| over 8x the local grey range: ~0.6 per module on a
#: barcode, ~0.07 for one outline in the window), local grey range (levels).
SCREEN_COHERENCE, SCREEN_EDGES, SCREEN_RANGE = 0.7, 0.25, 70.0
#: Cells (of 9 pixels) of the largest connected bar-like patch that let a picture through.
SCREEN_CELLS = 11
#: Pictures of at most this many pixels skip the screen: the later passes cost 30 ms or
#: less on them, and there the screen misses most: 2-D codes (DataMatrix, QR) with
#: 1-pixel modules (their edges run both ways) and codes of ~1-pixel bars on thumbnails.
SCREEN_BELOW = 160 * 160


def bar_patch(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box of a picture's barcode-like patches: the cheap test before the costly passes.

    A linear code is a patch where many parallel edges sit close together: the gradient's
    structure tensor, averaged over ~15 pixels, is coherent (edges parallel, at any
    angle), edges are dense for the local grey range (many bars, not one outline) and the
    range is high (printed bars, not texture). The box (x0, y0, x1, y1) spans the
    connected patches of at least SCREEN_CELLS such cells; None when there is none.
    Statistics are taken per 3x3 cell (area averages), so the test costs about a
    millisecond on a 350-pixel picture; it lets through ~8 % of grocery-store photos and
    all but one demo pack whose code only the later passes read, at native size and at
    half size (docs/BENCHMARKS.md). Photos, textures and printed text do not pass.
    """
    import cv2

    c = SCREEN_CELL
    h, w = gray.shape[0] // c, gray.shape[1] // c
    if h < SCREEN_SPAN or w < SCREEN_SPAN:
        return 0, 0, gray.shape[1], gray.shape[0]
    g = gray[:h * c, :w * c]
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    span = (SCREEN_SPAN, SCREEN_SPAN)

    def cells(a: np.ndarray) -> np.ndarray:
        small = cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA)
        return cv2.boxFilter(small, -1, span)

    jxx, jyy, jxy = cells(gx * gx), cells(gy * gy), cells(gx * gy)
    edges = cells(cv2.add(np.abs(gx), np.abs(gy)))
    kernel = np.ones((c * SCREEN_SPAN, c * SCREEN_SPAN), np.uint8)
    rng = cv2.subtract(cv2.dilate(g, kernel), cv2.erode(g, kernel))[c // 2::c, c // 2::c]
    rng = rng.astype(np.float32)
    coherent = (jxx - jyy) ** 2 + 4 * jxy ** 2 > (SCREEN_COHERENCE * (jxx + jyy)) ** 2
    mask = coherent & (edges > SCREEN_EDGES * (8 * rng + 1)) & (rng > SCREEN_RANGE)
    if np.count_nonzero(mask) < SCREEN_CELLS:
        return None
    stats = cv2.connectedComponentsWithStats(mask.view(np.uint8))[2]
    big = stats[1:][stats[1:, cv2.CC_STAT_AREA] >= SCREEN_CELLS]
    if not len(big):
        return None
    x0, y0 = big[:, 0].min(), big[:, 1].min()
    x1, y1 = (big[:, 0] + big[:, 2]).max(), (big[:, 1] + big[:, 3]).max()
    return int(x0) * c, int(y0) * c, int(x1) * c, int(y1) * c


def bar_like(gray: np.ndarray) -> bool:
    """Whether a picture shows a barcode-like patch (see bar_patch)."""
    return bar_patch(gray) is not None


#: Pixels the costly passes read around a screened patch, at least, each side: the patch
#: is often a part of the code only (its most regular bars).
REGION_MARGIN = 64


Box = tuple[int, int, int, int]


def _region(gray: np.ndarray, codes: list[Code]) -> tuple[Box, Box | None] | None:
    """Where a small picture's costly passes read, and the screen's patch in it, or None:
    the whole picture when the first pass read thin bars (their GTIN goes to a vote) or
    the picture is tiny (no patch then); the bar-like patch, widened, when nothing was
    read; None when no patch is seen."""
    h, w = gray.shape
    if codes:
        return ((0, 0, w, h), None) if any(_thin(c) for c in codes if c.gtin) else None
    if gray.size <= SCREEN_BELOW:
        return (0, 0, w, h), None
    patch = bar_patch(gray)
    if patch is None:
        return None
    x0, y0, x1, y1 = patch
    mx, my = max(REGION_MARGIN, (x1 - x0) // 2), max(REGION_MARGIN, (y1 - y0) // 2)
    rx, ry = max(0, x0 - mx), max(0, y0 - my)
    return (rx, ry, min(w, x1 + mx), min(h, y1 + my)), _shift(patch, -rx, -ry)


def read_codes(gray: np.ndarray) -> list[Code]:
    """Every code zxing-cpp decodes in a grayscale (H, W) uint8 picture, deduplicated.

    Boxes are in the picture's pixels, codes sorted top to bottom. A small picture where
    the first pass finds only thin-barred codes is also read upscaled, and its linear
    codes' GTINs are decided by a vote of the resamplings (see _vote). Where the first
    pass finds nothing, only the barcode-like patch the screen sees (bar_patch, widened
    by REGION_MARGIN) is read so; a picture without one is not (the first pass and the
    screen cost ~3 ms on a 350-pixel photo, the upscaled passes ~40x that on the whole
    picture). When that still leaves no GTIN, the regions of it that look like barcodes
    (bar_regions) are cut out, upscaled further and binarised, and those reads join the
    vote.
    """
    codes = _decode(gray, 1.0)
    found = _region(gray, codes) if max(gray.shape) <= UPSCALE_BELOW else None
    if found is not None:
        (x0, y0, x1, y1), patch = found
        part = gray[y0:y1, x0:x1]
        side = max(part.shape)
        runs = [codes] + [_decode(_upscaled(part, f, interp), f, (x0, y0))
                          for f, interp in _RESAMPLINGS if side * f <= UPSCALED_MAX]
        codes = _vote(runs)
        if not any(c.gtin for c in codes):
            codes = _vote(runs + [[replace(c, box=_shift(c.box, x0, y0)) for c in run]
                                  for run in _crop_runs(part, patch)])
    return sorted(codes, key=lambda c: (c.box[1], c.box[0]))


def _meets(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two boxes (x0, y0, x1, y1) overlap."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _shift(box: tuple[int, int, int, int], dx: int, dy: int) -> tuple[int, int, int, int]:
    """A box moved by (dx, dy): from a region's pixels to the picture's."""
    return box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy
