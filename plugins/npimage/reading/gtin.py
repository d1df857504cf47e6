"""GTINs and GS1 element strings: check digits, GTIN-14 normalisation, AI parsing.

Why: a code read on a pack is only useful if it names the right product, so every GTIN
that leaves this module has a valid GS1 check digit and is spelt as a GTIN-14 (EAN-8,
UPC-A and EAN-13 are left-padded with zeros), the form two GTINs are compared in.
A GS1 element string (GS1-128, GS1 DataMatrix, GS1 QR) is parsed with the GS1 table of
predefined lengths: fixed-length AIs need no separator, variable-length ones end at a
GS (FNC1, ASCII 29) or at the end of the string.
"""

from __future__ import annotations

import re

GS = "\x1d"

#: AIs whose value has a predefined fixed length (GS1 General Specifications, 7.8.5),
#: keyed by the AI's first two digits: (length of the AI, length of the value).
_FIXED: dict[str, tuple[int, int]] = {
    "00": (2, 18), "01": (2, 14), "02": (2, 14), "03": (2, 14), "04": (2, 16),
    "11": (2, 6), "12": (2, 6), "13": (2, 6), "14": (2, 6), "15": (2, 6), "16": (2, 6),
    "17": (2, 6), "18": (2, 6), "19": (2, 6), "20": (2, 2),
    **{str(p): (4, 6) for p in range(31, 37)},
    "41": (3, 13),
}
#: Length of the AI by its first two digits, for variable-length AIs (others: 4).
_AI_LEN: dict[str, int] = {
    **{f"{p:02d}": 2 for p in (10, 21, 22, 30, 37, *range(90, 100))},
    **{f"{p}": 3 for p in (23, 24, 25, 40, 42)},
}
_HRI = re.compile(r"\((\d{2,4})\)([^()]*)")
_DIGITAL_LINK = re.compile(r"^https?://[^?#]+?/01/(\d{8,14})(?:[/?#]|$)")


class GS1Error(ValueError):
    """An element string that does not follow the GS1 syntax."""


def check_digit(body: str) -> int:
    """GS1 check digit of `body` (every digit but the last): weights 3,1,3,… from the right."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def is_valid_gtin(code: str) -> bool:
    """True for an 8, 12, 13 or 14 digit string whose last digit is its check digit."""
    if not code.isascii() or not code.isdigit() or len(code) not in (8, 12, 13, 14):
        return False
    return check_digit(code[:-1]) == int(code[-1])


def to_gtin14(code: str | None) -> str | None:
    """The GTIN-14 spelling of a valid GTIN-8/12/13/14, else None (never a guess)."""
    if code is None:
        return None
    code = code.strip()
    if not is_valid_gtin(code):
        return None
    return code.zfill(14)


def _ai_length(data: str, i: int) -> int:
    head = data[i:i + 2]
    if head in _FIXED:
        return _FIXED[head][0]
    return _AI_LEN.get(head, 4)


def parse_element_string(data: str) -> list[tuple[str, str]]:
    """(AI, value) pairs of a raw GS1 element string (FNC1/GS separated).

    Accepts a leading symbology identifier (]C1, ]d2, ]Q3, ]e0) or GS. Raises GS1Error
    when an AI is not numeric or a fixed-length value is cut short.
    """
    data = re.sub(r"^\][A-Za-z]\d", "", data).lstrip(GS)
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(data):
        n = _ai_length(data, i)
        ai = data[i:i + n]
        if len(ai) != n or not ai.isdigit():
            raise GS1Error(f"bad AI at {i}: {data[i:i + 4]!r}")
        i += n
        fixed = _FIXED.get(ai[:2])
        if fixed is not None:
            value = data[i:i + fixed[1]]
            if len(value) != fixed[1]:
                raise GS1Error(f"AI ({ai}) needs {fixed[1]} characters, got {value!r}")
            i += fixed[1]
            if data[i:i + 1] == GS:  # a separator after a fixed field is tolerated
                i += 1
        else:
            end = data.find(GS, i)
            end = len(data) if end < 0 else end
            value = data[i:end]
            i = end + 1
        out.append((ai, value))
    return out


def parse_gs1(text: str) -> list[tuple[str, str]]:
    """(AI, value) pairs of a GS1 string, in HRI form `(01)…(10)…` or raw element form."""
    text = text.strip()
    if text.startswith("("):
        pairs = _HRI.findall(text)
        if not pairs or "".join(f"({a}){v}" for a, v in pairs) != text:
            raise GS1Error(f"not a GS1 HRI string: {text!r}")
        return pairs
    return parse_element_string(text)


def gtin_of_gs1(text: str) -> str | None:
    """The GTIN-14 of AI (01) in a GS1 string, or None (absent, malformed, bad check digit)."""
    try:
        pairs = parse_gs1(text)
    except GS1Error:
        return None
    values = {ai: v for ai, v in pairs}
    gtin = values.get("01")
    return to_gtin14(gtin) if gtin is not None and len(gtin) == 14 else None


def gtin_of_digital_link(text: str) -> str | None:
    """The GTIN-14 of a GS1 Digital Link URI (…/01/<gtin>…) in a QR code, or None."""
    m = _DIGITAL_LINK.match(text.strip())
    return to_gtin14(m.group(1)) if m else None
