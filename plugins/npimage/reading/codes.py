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

    return f"zxing-cpp {version('zxing-cpp')}"


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


def _decode(gray: np.ndarray, scale: float) -> list[Code]:
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
        box = (round(x0 / scale), round(y0 / scale), round(x1 / scale), round(y1 / scale))
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


def _vote(runs: list[list[Code]]) -> list[Code]:
    """Codes of several resamplings of one picture; linear codes' GTINs by majority.

    A check digit lets one misread in ten through, and at 1-2 pixels per bar misreads
    happen and even recur across resamplings. A linear code keeps its GTIN only when at
    least two resamplings decode its text and more of them decode it than any other text
    of its symbology; the others keep their text, without a GTIN.
    """
    votes = Counter((c.symbology, c.text) for run in runs for c in {(x.symbology, x.text): x
                                                                     for x in run}.values())
    first: dict[tuple[str, str], Code] = {}
    for run in runs:
        for c in run:
            first.setdefault((c.symbology, c.text), c)
    out = []
    for key, c in first.items():
        if c.gtin and c.symbology in _MODULES:
            rivals = max((v for k, v in votes.items() if k[0] == key[0] and k != key),
                         default=0)
            if votes[key] < 2 or votes[key] <= rivals:
                c = replace(c, gtin=None, note=f"thin bars: {votes[key]} of {len(runs)} reads "
                            f"agree, {rivals} for another text")
        out.append(c)
    return out


def read_codes(gray: np.ndarray) -> list[Code]:
    """Every code zxing-cpp decodes in a grayscale (H, W) uint8 picture, deduplicated.

    Boxes are in the picture's pixels, codes sorted top to bottom. A small picture where
    the first pass finds nothing, or only thin-barred codes, is also read upscaled, and
    its linear codes' GTINs are decided by a vote of the resamplings (see _vote).
    """
    codes = _decode(gray, 1.0)
    side = max(gray.shape)
    if side <= UPSCALE_BELOW and (not codes or any(_thin(c) for c in codes if c.gtin)):
        runs = [codes] + [_decode(_upscaled(gray, f, interp), f)
                          for f, interp in _RESAMPLINGS if side * f <= UPSCALED_MAX]
        codes = _vote(runs)
    return sorted(codes, key=lambda c: (c.box[1], c.box[0]))
