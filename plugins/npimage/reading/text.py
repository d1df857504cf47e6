"""Printed text on a picture (offline OCR with RapidOCR's ONNX models): lines, tokens, quantities.

Each line keeps its text, the recogniser's confidence and its box in the picture's
pixels; tokens are the line's words normalised for search (NFKC, lower case, accents
dropped) and quantities the amounts parsed from it (npimage.reading.quantities).
Large pictures are read at most OCR_MAX_SIDE pixels on their long side: packs print
their strength large, and the detector's cost grows with the area.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from npimage.reading.quantities import Quantity, parse_quantities

#: Long side (pixels) pictures are shrunk to before OCR.
OCR_MAX_SIDE = 1280
#: Lines the recogniser is less sure of are dropped.
MIN_CONFIDENCE = 0.5


@dataclass(frozen=True)
class TextLine:
    """One line of printed text."""

    text: str
    confidence: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the picture
    tokens: tuple[str, ...] = ()
    quantities: tuple[Quantity, ...] = field(default=())


@cache
def _engine() -> object:
    """RapidOCR without its 180-degree line classifier (it turned an upright "0.9 %" into
    "%60" on the demo's packs), one thread per process (mapped tasks run side by side)."""
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR(use_cls=False, intra_op_num_threads=1, inter_op_num_threads=1)


def reader_version() -> str:
    from importlib.metadata import version

    return f"rapidocr-onnxruntime {version('rapidocr-onnxruntime')}"


def tokens(text: str) -> tuple[str, ...]:
    """Search tokens of a line: NFKC, accents dropped, lower case, split on non-alphanumerics
    (decimal points and commas inside numbers kept, commas read as points)."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"(?<=\d),(?=\d)", ".", text)
    return tuple(t for t in re.findall(r"\d+(?:\.\d+)?|[^\W\d_]+|%", text) if t)


def ocr_fixes(text: str) -> str:
    """Undo OCR confusions that change amounts: "1001U/ml" (I read as 1) -> "100 IU/ml"."""
    return re.sub(r"(\d)[1lI|]U\b", r"\1 IU", text)


def _resize(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    scale = min(1.0, OCR_MAX_SIDE / max(h, w))
    if scale == 1.0:
        return rgb, 1.0
    import cv2

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


#: Word boxes closer than this many line heights on one line are joined into one line
#: (the detector often cuts "400 mg" into "400" and "mg").
JOIN_GAP = 1.0


def _join_words(words: list[tuple[str, float, tuple[float, float, float, float]]]
                ) -> list[tuple[str, float, tuple[float, float, float, float]]]:
    """Words (text, confidence, box) joined into lines: same row, small horizontal gaps."""
    lines: list[list] = []
    for text, conf, box in sorted(words, key=lambda w: (w[2][0], w[2][1])):
        x0, y0, x1, y1 = box
        for line in lines:
            lx0, ly0, lx1, ly1 = line[2]
            overlap = min(y1, ly1) - max(y0, ly0)
            height = min(y1 - y0, ly1 - ly0)
            if overlap >= 0.5 * height and -height <= x0 - lx1 <= JOIN_GAP * height:
                line[0] += " " + text
                line[1] = min(line[1], conf)
                line[2] = (min(lx0, x0), min(ly0, y0), max(lx1, x1), max(ly1, y1))
                break
        else:
            lines.append([text, conf, box])
    return [(t, c, b) for t, c, b in lines]


def read_text(rgb: np.ndarray) -> list[TextLine]:
    """The text lines of an RGB (H, W, 3) uint8 picture, top to bottom."""
    small, scale = _resize(rgb)
    result, _ = _engine()(small)  # type: ignore[operator]
    words = []
    for points, text, confidence in result or []:
        text = str(text).strip()
        if not text or float(confidence) < MIN_CONFIDENCE:
            continue
        xs = [p[0] / scale for p in points]
        ys = [p[1] / scale for p in points]
        words.append((text, float(confidence), (min(xs), min(ys), max(xs), max(ys))))
    lines = []
    for text, conf, (x0, y0, x1, y1) in _join_words(words):
        box = (int(x0), int(y0), round(x1), round(y1))
        amounts = tuple(parse_quantities(ocr_fixes(text)))
        lines.append(TextLine(text, conf, box, tokens(text), amounts))
    return sorted(lines, key=lambda ln: (ln.box[1], ln.box[0]))
