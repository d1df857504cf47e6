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


def read_codes(gray: np.ndarray) -> list[Code]:
    """Every code zxing-cpp decodes in a grayscale (H, W) uint8 picture, deduplicated."""
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
        found.setdefault((symbology, r.text),
                         Code(symbology, r.text, gtin, _box(r.position), gs1, note))
    return sorted(found.values(), key=lambda c: (c.box[1], c.box[0]))
