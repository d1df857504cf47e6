"""Barcodes and 2-D codes on a picture: EAN-13, UPC-A, EAN-8, ITF-14, GS1-128, DataMatrix, QR.

zxing-cpp finds and decodes the symbols; this module keeps, per symbol, its symbology,
decoded text, box and the GTIN it names. A GTIN is only ever given when its check digit
holds (linear retail codes, ITF-14, or AI 01 of a GS1 string or a GS1 Digital Link):
a wrong GTIN costs more than a missing one, so doubtful reads carry no GTIN and say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

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
def _formats() -> object:
    import zxingcpp

    f = zxingcpp.BarcodeFormat
    return [f.EAN13, f.UPCA, f.EAN8, f.ITF, f.Code128, f.DataMatrix, f.QRCode, f.MicroQRCode]


def reader_version() -> str:
    """Identifies the decoder, so stored reads are redone when it changes."""
    from importlib.metadata import version

    return f"zxing-cpp {version('zxing-cpp')}"


def _box(position: object) -> tuple[int, int, int, int]:
    pts = [(p.x, p.y) for p in (position.top_left, position.top_right,  # type: ignore[attr-defined]
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


#: Pictures whose long side is at most this are read again at twice their size when the
#: first pass finds nothing: bars under ~2 pixels wide (small or downsized packshots)
#: often decode once interpolated.
UPSCALE_BELOW = 1600


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
        box = tuple(round(v / scale) for v in _box(r.position))
        found.setdefault((symbology, r.text), Code(symbology, r.text, gtin, box, gs1, note))
    return list(found.values())


#: Modules (narrow bars) per symbol width, to tell how many pixels a bar had.
_MODULES = {"EAN-13": 95, "UPC-A": 95, "EAN-8": 67, "ITF-14": 135}
#: Linear codes whose bars were thinner than this (pixels) must decode the same text twice.
CONFIRM_BELOW = 2.5


def _fine(code: Code, scale: float) -> bool:
    """Whether a linear code's bars were thin (pixels at the decoded scale)."""
    n = _MODULES.get(code.symbology)
    return n is not None and (code.box[2] - code.box[0]) * scale / n < CONFIRM_BELOW


def _confirm(codes: list[Code], gray: np.ndarray, scale: float) -> list[Code]:
    """Drop the GTIN of thin-barred reads that another resampling does not decode alike.

    A check digit lets one misread in ten through; a misread at 1-2 pixels per bar is
    not rare, and a wrong GTIN costs more than a missing one.
    """
    thin = [c for c in codes if c.gtin and _fine(c, scale)]
    if not thin:
        return codes
    import cv2

    factor = 3.0 if scale > 1 else 2.0
    interp = cv2.INTER_LINEAR if scale > 1 else cv2.INTER_CUBIC
    again = {c.text for c in _decode(cv2.resize(gray, None, fx=factor, fy=factor,
                                                interpolation=interp), factor)}
    return [c if c not in thin or c.text in again else
            Code(c.symbology, c.text, None, c.box, c.gs1, "unconfirmed thin-bar read")
            for c in codes]


def read_codes(gray: np.ndarray) -> list[Code]:
    """Every code zxing-cpp decodes in a grayscale (H, W) uint8 picture, deduplicated.

    Boxes are in the picture's pixels, codes sorted top to bottom. A thin-barred linear
    code keeps its GTIN only when a second resampling decodes the same text.
    """
    codes, scale = _decode(gray, 1.0), 1.0
    if not codes and max(gray.shape) <= UPSCALE_BELOW:
        import cv2

        scale = 2.0
        codes = _decode(cv2.resize(gray, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC), 2.0)
    codes = _confirm(codes, gray, scale)
    return sorted(codes, key=lambda c: (c.box[1], c.box[0]))
