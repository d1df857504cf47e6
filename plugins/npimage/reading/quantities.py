"""Quantities printed on packs: "5 mg", "250 ml", "0,9 %", "2000 IU", "10 x 20 cm".

Pure Python. `parse_quantities(text)` finds every number followed by a known unit and
returns it as value + normalised unit (mcg, ug and µg -> µg; L, litre -> l; UI, I.U. ->
IU; ML -> ml; a capital G is a needle gauge, 21G, not grams), with decimal commas read
as decimal points, dimensions (`10 x 20 cm`) as
two values, and concentrations (`100 IU/ml`, `250 mg/5 ml`) as one unit with its
denominator. `Quantity.base` converts to one unit per dimension (mass in mg, volume in
ml, length in mm) so that "1 g" and "1000 mg" compare equal. A number may follow letters
("Amoxicillin400mg": OCR often drops the space), never a digit or a decimal point.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

#: Spelling (lower case, no dots) -> normalised unit.
_UNITS: dict[str, str] = {
    "kg": "kg", "g": "g", "gr": "g", "mg": "mg", "µg": "µg", "μg": "µg", "ug": "µg",
    "mcg": "µg", "ng": "ng",
    "l": "l", "litre": "l", "liter": "l", "litres": "l", "liters": "l", "dl": "dl",
    "cl": "cl", "ml": "ml", "µl": "µl", "μl": "µl", "ul": "µl",
    "%": "%", "iu": "IU", "ui": "IU", "ie": "IU", "u": "U", "mu": "mU",
    "mmol": "mmol", "mol": "mol", "meq": "mEq",
    "m": "m", "cm": "cm", "mm": "mm",
}
#: Normalised unit -> (dimension, factor to the dimension's base unit).
_BASE: dict[str, tuple[str, float]] = {
    "kg": ("mass", 1e6), "g": ("mass", 1e3), "mg": ("mass", 1.0), "µg": ("mass", 1e-3),
    "ng": ("mass", 1e-6),
    "l": ("volume", 1e3), "dl": ("volume", 100.0), "cl": ("volume", 10.0),
    "ml": ("volume", 1.0), "µl": ("volume", 1e-3),
    "%": ("percent", 1.0), "IU": ("iu", 1.0), "U": ("units", 1.0), "mU": ("units", 1e-3),
    "mmol": ("amount", 1.0), "mol": ("amount", 1e3), "mEq": ("equivalents", 1.0),
    "G": ("gauge", 1.0), "m": ("length", 1e3), "cm": ("length", 10.0), "mm": ("length", 1.0),
}
_DENOMINATORS = ("ml", "l", "g", "kg", "dose", "tablet", "tab", "caps", "capsule", "h")

_NUM = r"\d+(?:[.,]\d+)?"
_UNIT_RE = "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
_DEN_RE = "|".join(sorted(_DENOMINATORS, key=len, reverse=True))
_PATTERN = re.compile(
    rf"(?<![\d.,])(?P<a>{_NUM})(?:\s*[x×*]\s*(?P<b>{_NUM}))?\s*(?P<unit>{_UNIT_RE})"
    rf"(?:\s*/\s*(?P<dnum>{_NUM})?\s*(?P<den>{_DEN_RE}))?(?=$|[^\w%]|x\s*\d)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Quantity:
    """A printed amount: value (and second value of a dimension) with a normalised unit."""

    value: float
    unit: str
    value2: float | None = None
    per: str | None = None  # denominator of a concentration: "ml", "5 ml", "dose"
    text: str = ""  # the span it was read from

    @property
    def dimension(self) -> str:
        dim = _BASE[self.unit][0]
        return f"{dim}/{self.per}" if self.per else ("size" if self.value2 is not None else dim)

    @property
    def base(self) -> tuple[str, float, float | None]:
        """(dimension, value, value2) in the dimension's base unit (mg, ml, mm, …)."""
        factor = _BASE[self.unit][1]
        v2 = None if self.value2 is None else round(self.value2 * factor, 9)
        return self.dimension, round(self.value * factor, 9), v2

    def __str__(self) -> str:
        amount = _fmt(self.value) + (f" x {_fmt(self.value2)}" if self.value2 is not None else "")
        return f"{amount} {self.unit}" + (f"/{self.per}" if self.per else "")

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "value2": self.value2, "unit": self.unit, "per": self.per,
                "text": self.text}


def _fmt(v: float) -> str:
    return f"{v:g}"


def _number(s: str) -> float:
    return float(s.replace(",", "."))


def _clean(text: str) -> str:
    """NFKC (µ variants, full-width digits), dotted unit spellings (I.U.) undone."""
    text = unicodedata.normalize("NFKC", text).replace("μ", "µ")
    return re.sub(r"\b([IiUu])\.\s?([UuIi])\.?", r"\1\2", text)


def parse_quantities(text: str) -> list[Quantity]:
    """Every quantity in `text`, in reading order."""
    out = []
    for m in _PATTERN.finditer(_clean(text)):
        unit = "G" if m["unit"] == "G" and not m["den"] else _UNITS[m["unit"].lower()]
        per = None
        if m["den"]:
            den = m["den"].lower()
            den = _UNITS.get(den, den)
            per = f"{_fmt(_number(m['dnum']))} {den}" if m["dnum"] else den
        b = _number(m["b"]) if m["b"] else None
        out.append(Quantity(_number(m["a"]), unit, b, per, m.group(0)))
    return out


def parse_quantity(text: str) -> Quantity | None:
    """The first quantity of `text`, or None."""
    found = parse_quantities(text)
    return found[0] if found else None


def same_amount(a: Quantity, b: Quantity) -> bool:
    """Whether two quantities state the same amount (1 g == 1000 mg, 0,9 % == 0.9 %)."""
    return a.base == b.base
