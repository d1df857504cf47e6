"""Demo catalogue: a synthetic NextPage-like product image catalogue with known duplicates.

Why: the pipeline needs a catalogue that anyone can build offline in seconds, that looks
like a hospital PIM (boxes, bottles, blister packs, labels, a few product photos) and
whose duplicates are known, so that `make demo`, the tests and the benchmarks can measure
what the matcher finds. Nothing is downloaded: packaging is drawn with Pillow (default
font, EAN-13 / ITF-14 bars drawn here from the product's GTIN) and the photos are the
image files shipped inside the scikit-image package.

What `build_demo_catalogue(out_dir)` writes:

- `images/<GTIN>_PIECE_<nn>.jpg|png`: the NextPage file naming. Every product has one
  or two pictures (PIECE_01 front, PIECE_02 back of the pack).
- Look-alike families: products drawn from one template and layout that differ only in
  product name, dosage or colour. They are *different* products (never duplicates).
- Planted duplicates: a product entered twice. The second entry is a new product (own
  product code and GTIN) whose picture is the first entry's picture, either as an exact
  byte copy, a recompression, a resize, a format change (JPEG <-> PNG) or a retouch
  (brightness/contrast, price sticker, crop <= 5 %, rotation <= 3 degrees, sharpening).
- `manifest.csv`: `image_id,product_id,uri,reference,family,name` (uri relative to the
  manifest's folder, image_id = file stem, product_id = product code, reference = GTIN,
  family = the product's template: box, bottle, blister, label or photo; name = the
  product's name as a PIM shows it).
- `reading_truth.csv`: what each picture prints (its barcode's GTIN, its strength) and
  whether that GTIN disagrees with the manifest's reference (npimage_demo.barcodes).
- `truth.csv`: `image_id,group_id,kind,expected_band`. group_id names the source picture
  (the image_id of the original): all planted copies of a picture share it, and every
  other picture is alone in its group. kind is original | lookalike (an original whose
  product belongs to a look-alike family, after the family's first product) | copy |
  recompress | resize | format | retouch. expected_band is the band a matcher should
  give the pair (original, this image): `same` for copy/recompress/resize/format,
  `retouched` for retouch (meaning "at least retouched": `same` is also right), empty
  for originals and look-alikes. Two images of different groups are not duplicates.

Everything is a function of the seed: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, PngImagePlugin

from npimage_demo import barcodes, require_scikit_image

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]

#: Kinds of truth.csv rows and the band a matcher should give (original, image).
EXPECTED_BAND: dict[str, str] = {
    "original": "",
    "lookalike": "",
    "copy": "same",
    "recompress": "same",
    "resize": "same",
    "format": "same",
    "mode": "same",  # variant families (npimage_demo.variants): another pixel mode
    "retouch": "retouched",
}
PLANTED_KINDS = ("copy", "recompress", "resize", "format", "retouch")
_PLANTED_WEIGHTS = (0.15, 0.2, 0.2, 0.15, 0.3)
RETOUCHES = ("tone", "sticker", "crop", "rotate", "sharpen")
#: Variant families `npimage demo` adds (npimage_demo.variants).
DEMO_VARIANT_FAMILIES = 12

#: Photos that are files inside the installed scikit-image package (skimage/data).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "logo.png",
    "color.png",
    "camera.png",
    "coins.png",
    "page.png",
    "moon.png",
)

# The default font has no accented glyphs: every text below is plain ASCII.
_BRANDS = (
    "Medivia",
    "Pharmalis",
    "Sanocor",
    "Heliomed",
    "Curavel",
    "Biosana",
    "Steripro",
    "Novacare",
    "Alpimed",
    "Vitarel",
    "Orthemia",
    "Dermaflor",
    "Clinexa",
    "Lemanpharm",
    "Jurasan",
    "Genevex",
)
#: Product kinds: names, then the dosages and pack sizes that make sense for them.
_DRUGS = (
    (
        "Paracetamol",
        "Ibuprofen",
        "Amoxicillin",
        "Omeprazole",
        "Metformin",
        "Magnesium",
        "Amlodipine",
        "Atorvastatin",
        "Ondansetron",
        "Vitamin D3",
        "Diclofenac",
        "Tramadol",
    ),
    ("500 mg", "1 g", "200 mg", "400 mg", "10 mg", "20 mg", "40 mg", "850 mg", "75 mg", "5 mg"),
    ("20 tablets", "30 capsules", "16 tablets", "60 capsules", "100 tablets", "10 sachets"),
)
_SOLUTIONS = (
    (
        "Sodium chloride",
        "Glucose",
        "Heparin",
        "Povidone iodine",
        "Lidocaine",
        "Insulin",
        "Saline solution",
        "Enoxaparin",
        "Chlorhexidine",
        "Ringer lactate",
    ),
    ("10 ml", "250 ml", "500 ml", "0.9 %", "5 %", "2 %", "100 IU/ml", "1000 IU", "5 ml", "1 L"),
    ("1 bottle", "10 ampoules", "12 vials", "20 bags", "6 bottles", "50 ampoules"),
)
_DEVICES = (
    (
        "Sterile compresses",
        "Luer-Lock syringe",
        "Nitrile gloves",
        "Wound dressing",
        "Hypodermic needles",
        "IV catheter",
        "Suture kit",
        "Swabs",
    ),
    ("10 x 10 cm", "21G x 40 mm", "5 ml", "size M", "size L", "18G", "22G", "3-0", "10 ml"),
    ("50 pieces", "100 pieces", "10 pieces", "200 pieces", "25 kits", "1 box"),
)
#: Which pack templates suit each product kind.
_KINDS = (
    (_DRUGS, ("box", "blister", "bottle")),
    (_SOLUTIONS, ("bottle", "box", "label")),
    (_DEVICES, ("box", "label")),
)
_WORDS = (
    "Composition",
    "excipients",
    "starch",
    "povidone",
    "stearate",
    "magnesium",
    "Dosage",
    "adults",
    "tablet",
    "per",
    "day",
    "Store",
    "below",
    "25 C",
    "away",
    "from",
    "light",
    "Keep",
    "out",
    "of",
    "reach",
    "children",
    "oral",
    "use",
    "sterile",
    "single",
    "Read",
    "leaflet",
    "before",
    "hospital",
    "only",
    "do",
    "not",
    "reuse",
    "latex",
    "free",
)
_PALETTE: tuple[RGB, ...] = (
    (0, 94, 170),
    (200, 30, 45),
    (0, 140, 90),
    (240, 130, 0),
    (110, 40, 140),
    (0, 150, 170),
    (210, 60, 120),
    (60, 70, 80),
    (150, 170, 20),
    (230, 190, 0),
    (20, 50, 120),
    (170, 80, 30),
)
_BOTTLE_GLASS: tuple[RGB, ...] = ((150, 85, 20), (238, 238, 234), (200, 220, 235), (90, 50, 20))
_LOGOS = ("circle", "ring", "cross", "triangle", "diamond", "leaf", "bars")
_GTIN13_PREFIXES = ("34009", "376", "301", "400", "761", "590", "871", "7680")
_OWN_FILE = re.compile(r"^\d{13,14}_PIECE_\d{2}\.(jpg|png)$")


@dataclass(frozen=True)
class DemoCatalogue:
    """What build_demo_catalogue wrote: the two CSVs and how many images."""

    manifest: Path
    truth: Path
    n_images: int
    n_planted: int


@dataclass(frozen=True)
class Product:
    """One catalogue entry and everything needed to draw its pictures."""

    key: int  # position in the plan; product_id is given once all products are known
    gtin: str
    brand: str
    name: str
    dosage: str
    quantity: str
    template: str  # box | bottle | blister | label | photo
    primary: RGB
    accent: RGB
    logo: str
    layout_seed: int  # shared by a look-alike family: same geometry and background
    size: tuple[int, int]
    photo: str | None = None  # skimage file for photo products
    family_rank: int = 0  # 0 for the first (or only) product of a family
    product_id: str = ""


@dataclass(frozen=True)
class ImageSpec:
    """One file of the catalogue: which product, how it is made, what the truth says."""

    image_id: str
    product_key: int
    ext: str  # ".jpg" or ".png"
    kind: str
    group_id: str
    view: str = "front"  # originals: front | back
    source: str | None = None  # planted images: image_id of the original
    edit: str = ""  # planted images: recompress quality, retouch name, ...
    seed: int = 0
    quality: int = 90

    @property
    def file_name(self) -> str:
        return self.image_id + self.ext


@dataclass(frozen=True)
class Plan:
    """The whole catalogue before any pixel is drawn."""

    products: tuple[Product, ...]
    images: tuple[ImageSpec, ...]


# --------------------------------------------------------------------------- GTIN


def gtin_check_digit(body: str) -> int:
    """GS1 check digit of a GTIN body (all but the last digit): weights 3,1,3... from the right."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def is_valid_gtin(code: str) -> bool:
    """True for an 8, 12, 13 or 14 digit string whose last digit is its GS1 check digit."""
    if not code.isdigit() or len(code) not in (8, 12, 13, 14):
        return False
    return gtin_check_digit(code[:-1]) == int(code[-1])


def _new_gtin(rng: np.random.Generator, used: set[str], like: str | None = None) -> str:
    """A fresh valid GTIN: mostly GTIN-13, some GTIN-14 ("0" + GTIN-13 or an ITF-14 case).

    With `like` (a product entered twice), sometimes the GTIN-14 spelling of its GTIN-13.
    """
    while True:
        if like is not None and len(like) == 13 and rng.random() < 0.3:
            code = "0" + like
        else:
            prefix = _GTIN13_PREFIXES[rng.integers(len(_GTIN13_PREFIXES))]
            digits = "".join(str(d) for d in rng.integers(0, 10, 12 - len(prefix)))
            code = prefix + digits
            code += str(gtin_check_digit(code))
            r = rng.random()
            if r < 0.25:
                code = "0" + code
            elif r < 0.33:
                body = str(rng.integers(1, 9)) + code[:12]
                code = body + str(gtin_check_digit(body))
        if code not in used:
            used.add(code)
            return code


# ----------------------------------------------------------------------- barcodes

_EAN_L = (
    "0001101",
    "0011001",
    "0010011",
    "0111101",
    "0100011",
    "0110001",
    "0101111",
    "0111011",
    "0110111",
    "0001011",
)
_EAN_PARITY = (
    "LLLLLL",
    "LLGLGG",
    "LLGGLG",
    "LLGGGL",
    "LGLLGG",
    "LGGLLG",
    "LGGGLL",
    "LGLGLG",
    "LGLGGL",
    "LGGLGL",
)
_ITF = ("nnwwn", "wnnnw", "nwnnw", "wwnnn", "nnwnw", "wnwnn", "nwwnn", "nnnww", "wnnwn", "nwnwn")


def _ean_r(d: int) -> str:
    """Right-hand (R) pattern of a digit: the L pattern with dark and light swapped."""
    return "".join("1" if c == "0" else "0" for c in _EAN_L[d])


def ean13_modules(code: str) -> str:
    """The 95 modules ('1' dark, '0' light) of an EAN-13 symbol for a 13-digit code.

    Guards 101 / 01010 / 101; the first digit is not drawn but picks which of the six
    left digits use the L set and which the G set (the reversed R pattern).
    """
    digits = [int(c) for c in code]
    left = "".join(
        _EAN_L[d] if p == "L" else _ean_r(d)[::-1]
        for d, p in zip(digits[1:7], _EAN_PARITY[digits[0]], strict=True)
    )
    right = "".join(_ean_r(d) for d in digits[7:])
    return "101" + left + "01010" + right + "101"


def itf14_widths(code: str) -> list[int]:
    """Element widths (bar, space, bar, ...) of an ITF-14 symbol, narrow 2 and wide 5.

    Digits go in pairs: the first of a pair is drawn by the five bars, the second by the
    five spaces between them; start is four narrow elements, stop wide bar, narrow, narrow.
    """
    widths = [2, 2, 2, 2]
    for a, b in zip(code[0::2], code[1::2], strict=True):
        for wa, wb in zip(_ITF[int(a)], _ITF[int(b)], strict=True):
            widths += [5 if wa == "w" else 2, 5 if wb == "w" else 2]
    return [*widths, 5, 2, 2]


def _draw_barcode(draw: ImageDraw.ImageDraw, box: Box, gtin: str) -> None:
    """Draw the product's barcode with its digits in `box` (EAN-13, or ITF-14 for GTIN-14).

    The pack prints `barcodes.printed_gtin(gtin)`: for a few products a wrong code.
    """
    barcodes.draw_barcode(draw, box, barcodes.printed_gtin(gtin))


# ------------------------------------------------------------------- drawing aids


@functools.lru_cache(maxsize=256)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at a pixel size (cached: loading it parses the font)."""
    return ImageFont.load_default(size=max(6, size))


def _fit_font(text: str, width: float, height: float) -> ImageFont.FreeTypeFont:
    """The largest default-font size whose rendering of `text` fits width x height."""
    size = max(6, int(height))
    length = _font(size).getlength(text)
    if length > width:
        size = max(6, int(size * width / length))
    return _font(size)  # type: ignore[return-value]


def _text_center(
    draw: ImageDraw.ImageDraw, text: str, box: Box, fill: RGB, bold: bool = False
) -> None:
    """Draw `text` centred in `box`, as large as fits."""
    x0, y0, x1, y1 = box
    font = _fit_font(text, (x1 - x0) * 0.95, (y1 - y0) * 0.8)
    stroke = max(1, int(font.size / 25)) if bold else 0
    draw.text(
        ((x0 + x1) / 2, (y0 + y1) / 2),
        text,
        font=font,
        fill=fill,
        anchor="mm",
        stroke_width=stroke,
        stroke_fill=fill,
    )


def _text_left(draw: ImageDraw.ImageDraw, text: str, box: Box, fill: RGB) -> None:
    """Draw `text` left-aligned and vertically centred in `box`."""
    x0, y0, x1, y1 = box
    font = _fit_font(text, x1 - x0, (y1 - y0) * 0.8)
    draw.text((x0, (y0 + y1) / 2), text, font=font, fill=fill, anchor="lm")


def _shade(c: RGB, f: float) -> RGB:
    """Colour darkened (f < 1) or lightened towards white (f > 1)."""
    if f <= 1:
        return (int(c[0] * f), int(c[1] * f), int(c[2] * f))
    t = min(1.0, f - 1)
    return tuple(int(v + (255 - v) * t) for v in c)  # type: ignore[return-value]


def _background(size: tuple[int, int], rng: np.random.Generator, tint: RGB) -> Image.Image:
    """Studio backdrop: a soft vertical gradient from a light tint to white, with sensor noise."""
    w, h = size
    top = np.array(_shade(tint, 1.85), dtype=np.float32)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    grad = top * (1 - t) + np.float32(250.0) * t
    noise = rng.integers(-3, 4, size=(h, w, 1), dtype=np.int16)
    pixels = np.clip(grad + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _shadow(img: Image.Image, box: Box) -> None:
    """Darken a blurred ellipse under an object standing on the backdrop."""
    x0, _, x1, y1 = box
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).ellipse((x0, y1 - 0.02 * img.height, x1, y1 + 0.04 * img.height), 90)
    mask = mask.filter(ImageFilter.GaussianBlur(max(2, img.width // 60)))
    img.paste((70, 70, 70), (0, 0), mask)


def _logo(draw: ImageDraw.ImageDraw, box: Box, shape: str, fg: RGB, bg: RGB) -> None:
    """A brand mark: a simple coloured shape in a square box."""
    x0, y0, x1, y1 = box
    s = x1 - x0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fg)
        draw.ellipse((cx - s * 0.2, cy - s * 0.2, cx + s * 0.2, cy + s * 0.2), fill=bg)
    elif shape == "ring":
        draw.ellipse(box, outline=fg, width=max(2, int(s * 0.14)))
    elif shape == "cross":
        draw.rectangle((cx - s * 0.15, y0, cx + s * 0.15, y1), fill=fg)
        draw.rectangle((x0, cy - s * 0.15, x1, cy + s * 0.15), fill=fg)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fg)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fg)
    elif shape == "leaf":
        draw.ellipse((x0, y0 + s * 0.2, x1, y1 - s * 0.2), fill=fg)
        draw.line((x0 + s * 0.1, cy, x1 - s * 0.1, cy), fill=bg, width=max(1, int(s * 0.06)))
    else:  # bars
        for i in range(3):
            bx = x0 + i * s / 3
            draw.rectangle((bx + s * 0.04, y0 + i * s * 0.2, bx + s / 3 - s * 0.04, y1), fill=fg)


def _lines_of_text(
    draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator, n: int, fill: RGB
) -> None:
    """Fill a box with `n` lines of leaflet-like small print."""
    x0, y0, x1, y1 = box
    lh = (y1 - y0) / n
    for i in range(n):
        words = [_WORDS[k] for k in rng.integers(len(_WORDS), size=int(rng.integers(4, 9)))]
        width = (x1 - x0) * (0.55 + 0.45 * rng.random())
        _text_left(draw, " ".join(words), (x0, y0 + i * lh, x0 + width, y0 + (i + 0.85) * lh), fill)


def _back_panel(
    draw: ImageDraw.ImageDraw, box: Box, p: Product, rng: np.random.Generator, ink: RGB
) -> None:
    """Back of a pack: brand, small print, lot/expiry and a large barcode."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    _text_left(draw, f"{p.brand} - {p.name}", (x0, y0, x1, y0 + h * 0.12), ink)
    _lines_of_text(draw, (x0, y0 + h * 0.15, x1, y0 + h * 0.6), rng, 6, (70, 70, 70))
    lot = f"LOT {rng.integers(10, 99)}{chr(65 + int(rng.integers(26)))}{rng.integers(100, 999)}"
    exp = f"EXP {rng.integers(1, 13):02d}/{rng.integers(2026, 2031)}"
    _text_left(draw, f"{lot}   {exp}", (x0, y0 + h * 0.63, x0 + w * 0.7, y0 + h * 0.72), ink)
    _draw_barcode(draw, (x0 + w * 0.2, y0 + h * 0.76, x0 + w * 0.8, y1), p.gtin)


# --------------------------------------------------------------------- templates


def _front_panel(draw: ImageDraw.ImageDraw, box: Box, p: Product, band: float = 0.24) -> None:
    """Front of a pack: brand band with logo, product name, dosage, quantity, barcode."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    by = y0 + h * band
    draw.rectangle((x0, y0, x1, by), fill=p.primary)
    _text_left(draw, p.brand.upper(), (x0 + w * 0.06, y0 + h * 0.03, x0 + w * 0.7, by), (255,) * 3)
    ls = min(w * 0.18, h * band * 0.7)
    lx, ly = x1 - w * 0.06 - ls, (y0 + by - ls) / 2
    _logo(draw, (lx, ly, lx + ls, ly + ls), p.logo, (255, 255, 255), p.primary)
    _text_center(
        draw,
        p.name,
        (x0 + w * 0.05, by + h * 0.05, x1 - w * 0.05, by + h * 0.2),
        (30, 30, 40),
        bold=True,
    )
    _text_center(
        draw,
        p.dosage,
        (x0 + w * 0.15, by + h * 0.21, x1 - w * 0.15, by + h * 0.38),
        p.accent,
        bold=True,
    )
    _text_center(
        draw, p.quantity, (x0 + w * 0.25, by + h * 0.39, x1 - w * 0.25, by + h * 0.46), (90, 90, 90)
    )
    draw.rectangle((x0, y1 - h * 0.07, x1, y1), fill=p.accent)
    _draw_barcode(draw, (x0 + w * 0.05, y1 - h * 0.27, x0 + w * 0.45, y1 - h * 0.09), p.gtin)


def _render_box(img: Image.Image, p: Product, view: str, rng: np.random.Generator) -> None:
    """A carton seen slightly from above and the right: front, top and side faces."""
    W, H = img.size
    lay = np.random.default_rng(p.layout_seed)
    bw, bh = W * lay.uniform(0.5, 0.66), H * lay.uniform(0.52, 0.72)
    d = bw * lay.uniform(0.1, 0.18)
    x0, y0 = (W - bw - d) / 2, (H - bh + d * 0.6) / 2
    x1, y1 = x0 + bw, y0 + bh
    _shadow(img, (x0, y0, x1 + d, y1))
    draw = ImageDraw.Draw(img)
    draw.polygon(
        [(x1, y0), (x1 + d, y0 - d * 0.6), (x1 + d, y1 - d * 0.6), (x1, y1)],
        fill=_shade(p.primary, 0.6),
    )
    draw.polygon(
        [(x0, y0), (x0 + d, y0 - d * 0.6), (x1 + d, y0 - d * 0.6), (x1, y0)],
        fill=_shade(p.primary, 1.5),
    )
    draw.rectangle((x0, y0, x1, y1), fill=(248, 248, 246))
    if view == "back":
        draw.rectangle((x0, y0, x1, y0 + bh * 0.08), fill=p.primary)
        _back_panel(
            draw,
            (x0 + bw * 0.06, y0 + bh * 0.11, x1 - bw * 0.06, y1 - bh * 0.04),
            p,
            rng,
            p.primary,
        )
    else:
        _front_panel(draw, (x0, y0, x1, y1), p)


def _render_bottle(img: Image.Image, p: Product, view: str, rng: np.random.Generator) -> None:
    """A bottle: glass body, shoulder, neck and cap, with a wrap-around label."""
    W, H = img.size
    lay = np.random.default_rng(p.layout_seed)
    glass = _BOTTLE_GLASS[int(lay.integers(len(_BOTTLE_GLASS)))]
    bw, bh = W * lay.uniform(0.34, 0.46), H * lay.uniform(0.48, 0.58)
    cx, y1 = W / 2, H * 0.9
    x0, x1, y0 = cx - bw / 2, cx + bw / 2, y1 - bh
    nw, nh = bw * lay.uniform(0.3, 0.42), H * 0.08
    _shadow(img, (x0, y0, x1, y1))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((x0, y0, x1, y1), radius=bw * 0.12, fill=glass)
    draw.polygon(
        [
            (x0 + bw * 0.03, y0 + bw * 0.1),
            (cx - nw / 2, y0 - H * 0.07),
            (cx + nw / 2, y0 - H * 0.07),
            (x1 - bw * 0.03, y0 + bw * 0.1),
        ],
        fill=glass,
    )
    draw.rectangle((cx - nw / 2, y0 - H * 0.07 - nh, cx + nw / 2, y0 - H * 0.07), fill=glass)
    draw.rounded_rectangle(
        (cx - nw * 0.62, y0 - H * 0.07 - nh * 2.2, cx + nw * 0.62, y0 - H * 0.07 - nh * 0.8),
        radius=nw * 0.1,
        fill=p.primary,
    )
    draw.rectangle(
        (x0 + bw * 0.08, y0 + bh * 0.05, x0 + bw * 0.14, y1 - bh * 0.05), fill=_shade(glass, 1.4)
    )
    label = (x0, y0 + bh * 0.2, x1, y1 - bh * 0.1)
    draw.rectangle(label, fill=(250, 250, 248))
    if view == "back":
        lx0, ly0, lx1, ly1 = label
        _back_panel(
            draw,
            (lx0 + bw * 0.06, ly0 + bh * 0.03, lx1 - bw * 0.06, ly1 - bh * 0.03),
            p,
            rng,
            p.primary,
        )
    else:
        _front_panel(draw, label, p, band=0.2)


def _render_blister(img: Image.Image, p: Product, view: str, rng: np.random.Generator) -> None:
    """A blister pack on its printed card: a foil sheet with rows of pills or capsules."""
    W, H = img.size
    lay = np.random.default_rng(p.layout_seed)
    cw, ch = W * lay.uniform(0.78, 0.9), H * lay.uniform(0.55, 0.7)
    x0, y0 = (W - cw) / 2, (H - ch) / 2
    x1, y1 = x0 + cw, y0 + ch
    _shadow(img, (x0, y0, x1, y1))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((x0, y0, x1, y1), radius=cw * 0.03, fill=p.primary)
    foil = (x0 + cw * 0.05, y0 + ch * 0.24, x1 - cw * 0.05, y1 - ch * 0.06)
    draw.rounded_rectangle(foil, radius=cw * 0.02, fill=(206, 208, 214))
    fx0, fy0, fx1, fy1 = foil
    if view == "back":
        for i in range(5):
            yy = fy0 + (fy1 - fy0) * (0.05 + i * 0.19)
            text = f"{p.name} {p.dosage}   {p.brand}   {p.name} {p.dosage}"
            _text_left(
                draw, text, (fx0 + cw * 0.03, yy, fx1 - cw * 0.03, yy + ch * 0.1), (60, 60, 70)
            )
        _draw_barcode(draw, (x1 - cw * 0.3, y0 + ch * 0.03, x1 - cw * 0.03, y0 + ch * 0.21), p.gtin)
        _text_left(
            draw,
            p.brand.upper(),
            (x0 + cw * 0.04, y0 + ch * 0.04, x0 + cw * 0.6, y0 + ch * 0.2),
            (255, 255, 255),
        )
        return
    rows, cols = (2, 5) if lay.random() < 0.5 else (3, 4)
    capsule = lay.random() < 0.5
    pw, ph = (fx1 - fx0) / cols, (fy1 - fy0) / rows
    for r in range(rows):
        for c in range(cols):
            px, py = fx0 + c * pw + pw * 0.5, fy0 + r * ph + ph * 0.5
            rx, ry = (pw * 0.38, ph * 0.22) if capsule else (min(pw, ph) * 0.33,) * 2
            draw.ellipse(
                (px - rx * 1.15, py - ry * 1.3, px + rx * 1.15, py + ry * 1.3),
                fill=(228, 230, 236),
                outline=(160, 162, 170),
            )
            draw.ellipse((px - rx, py - ry, px + rx, py + ry), fill=(252, 252, 250))
            if capsule:
                draw.chord((px - rx, py - ry, px + rx, py + ry), 90, 270, fill=p.accent)
    _text_left(
        draw,
        p.brand.upper(),
        (x0 + cw * 0.04, y0 + ch * 0.02, x0 + cw * 0.4, y0 + ch * 0.1),
        (255, 255, 255),
    )
    _text_left(
        draw,
        f"{p.name} {p.dosage}",
        (x0 + cw * 0.04, y0 + ch * 0.1, x0 + cw * 0.66, y0 + ch * 0.22),
        (255, 255, 255),
    )
    _draw_barcode(draw, (x1 - cw * 0.3, y0 + ch * 0.03, x1 - cw * 0.03, y0 + ch * 0.21), p.gtin)


def _render_label(img: Image.Image, p: Product, view: str, rng: np.random.Generator) -> None:
    """A flat product label (scanned): border, header with logo, text fields, big barcode."""
    W, H = img.size
    lay = np.random.default_rng(p.layout_seed)
    lw, lh = W * lay.uniform(0.8, 0.9), H * lay.uniform(0.7, 0.85)
    x0, y0 = (W - lw) / 2, (H - lh) / 2
    x1, y1 = x0 + lw, y0 + lh
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle(
        (x0, y0, x1, y1),
        radius=lw * 0.04,
        fill=(255, 255, 255),
        outline=p.primary,
        width=max(2, int(lw * 0.012)),
    )
    ix0, iy0, ix1, iy1 = x0 + lw * 0.05, y0 + lh * 0.05, x1 - lw * 0.05, y1 - lh * 0.05
    if view == "back":
        _back_panel(draw, (ix0, iy0, ix1, iy1), p, rng, p.primary)
        return
    iw, ih = ix1 - ix0, iy1 - iy0
    ls = ih * 0.16
    _logo(draw, (ix0, iy0, ix0 + ls, iy0 + ls), p.logo, p.primary, (255, 255, 255))
    _text_left(draw, p.brand, (ix0 + ls * 1.3, iy0, ix0 + iw * 0.75, iy0 + ls), p.primary)
    draw.line(
        (ix0, iy0 + ls * 1.2, ix1, iy0 + ls * 1.2), fill=p.primary, width=max(1, int(ih / 150))
    )
    _text_left(draw, p.name, (ix0, iy0 + ih * 0.22, ix1, iy0 + ih * 0.36), (20, 20, 30))
    _text_left(draw, p.dosage, (ix0, iy0 + ih * 0.37, ix0 + iw * 0.42, iy0 + ih * 0.5), p.accent)
    ref = f"REF {p.gtin[-6:]}   {p.quantity}"
    _text_left(draw, ref, (ix0, iy0 + ih * 0.52, ix0 + iw * 0.7, iy0 + ih * 0.58), (60, 60, 60))
    for k, tag in enumerate(("STERILE", "CE", "Rx")):
        tx = ix1 - iw * (0.16 + 0.18 * k)
        draw.rectangle(
            (tx, iy0 + ih * 0.4, tx + iw * 0.16, iy0 + ih * 0.5),
            outline=p.accent,
            width=max(1, int(ih / 200)),
        )
        _text_center(draw, tag, (tx, iy0 + ih * 0.4, tx + iw * 0.16, iy0 + ih * 0.5), p.accent)
    _draw_barcode(draw, (ix0 + iw * 0.15, iy0 + ih * 0.64, ix1 - iw * 0.15, iy1), p.gtin)


_RENDERERS = {
    "box": _render_box,
    "bottle": _render_bottle,
    "blister": _render_blister,
    "label": _render_label,
}


def _skimage_photo(name: str) -> Image.Image:
    """A photo file shipped inside scikit-image (never fetched), as RGB on white."""
    with Image.open(_skimage_dir() / name) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            rgba = im.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, (0, 0), rgba)
            return flat
        return im.convert("RGB")


def available_photos() -> tuple[str, ...]:
    """The SKIMAGE_PHOTOS that exist in the installed scikit-image package."""
    folder = _skimage_dir()
    return tuple(n for n in SKIMAGE_PHOTOS if (folder / n).is_file())


def render_original(p: Product, spec: ImageSpec) -> Image.Image:
    """Draw an original picture of a product (front or back view, or its photo)."""
    if p.photo is not None:
        return _skimage_photo(p.photo).resize(p.size, Image.Resampling.LANCZOS)
    bg_rng = np.random.default_rng(p.layout_seed + 7)  # a family shares its backdrop
    img = _background(p.size, bg_rng, p.primary)
    _RENDERERS[p.template](img, p, spec.view, np.random.default_rng(spec.seed))
    return img


# --------------------------------------------------------------------- planted edits


def _encode(img: Image.Image, ext: str, quality: int = 90, level: int = 6, tool: str = "") -> bytes:
    """JPEG (given quality) or PNG (given zlib level, `tool` as its Software tag) bytes."""
    buf = io.BytesIO()
    if ext == ".png":
        info = PngImagePlugin.PngInfo()
        if tool:
            info.add_text("Software", tool)
        img.save(buf, "PNG", compress_level=level, pnginfo=info)
    else:
        img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _sticker(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Stick a small price tag or promo label on the picture (about 12 % of its width)."""
    out = img.copy()
    w = img.width * rng.uniform(0.1, 0.14)
    h = w * 0.45
    x = rng.uniform(0.05, 0.95) * (img.width - w)
    y = rng.uniform(0.05, 0.95) * (img.height - h)
    colours = ((255, 214, 0), (225, 35, 45), (255, 255, 255))
    fill = colours[int(rng.integers(len(colours)))]
    ink = (255, 255, 255) if fill == (225, 35, 45) else (20, 20, 20)
    text = ("CHF 4.90", "-20 %", "PROMO", "NEW", "CHF 12.50")[int(rng.integers(5))]
    draw = ImageDraw.Draw(out)
    draw.rounded_rectangle((x, y, x + w, y + h), radius=h * 0.2, fill=fill, outline=(40, 40, 40))
    _text_center(draw, text, (x + w * 0.06, y, x + w * 0.94, y + h), ink, bold=True)
    return out


def retouch(img: Image.Image, name: str, rng: np.random.Generator) -> Image.Image:
    """One small retouch: tone, sticker, crop (<= 5 %), rotate (<= 3 degrees) or sharpen."""
    if name == "tone":
        b = 1 + rng.choice((-1, 1)) * rng.uniform(0.05, 0.1)
        c = 1 + rng.choice((-1, 1)) * rng.uniform(0.05, 0.1)
        return ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(b)).enhance(c)
    if name == "sticker":
        return _sticker(img, rng)
    if name == "crop":
        fx, fy = rng.uniform(0.015, 0.04, size=2)
        left, top = rng.uniform(0, 1) * fx * img.width, rng.uniform(0, 1) * fy * img.height
        right = img.width - (fx * img.width - left)
        bottom = img.height - (fy * img.height - top)
        return img.crop((round(left), round(top), round(right), round(bottom)))
    if name == "rotate":
        angle = float(rng.choice((-1, 1)) * rng.uniform(1.0, 3.0))
        border = np.asarray(img)[[0, -1]].reshape(-1, 3).mean(axis=0)
        fill = tuple(int(v) for v in border)
        return img.rotate(angle, Image.Resampling.BICUBIC, expand=False, fillcolor=fill)
    if name == "sharpen":
        return img.filter(ImageFilter.UnsharpMask(radius=2, percent=int(rng.integers(80, 150))))
    raise ValueError(f"unknown retouch {name!r}")


def planted_bytes(source: Path, spec: ImageSpec) -> bytes:
    """The file of a planted duplicate, made from its original's file."""
    data = source.read_bytes()
    if spec.kind == "copy":
        return data
    with Image.open(io.BytesIO(data)) as im:
        img = im.convert("RGB")
    rng = np.random.default_rng(spec.seed)
    if spec.kind == "recompress":  # JPEG at another quality; PNG re-saved by another tool
        return _encode(img, spec.ext, quality=spec.quality, level=9, tool="demo re-save")
    if spec.kind == "resize":
        scale = float(rng.choice((rng.uniform(0.5, 0.8), rng.uniform(1.2, 1.5))))
        size = (max(64, round(img.width * scale)), max(64, round(img.height * scale)))
        return _encode(img.resize(size, Image.Resampling.LANCZOS), spec.ext, spec.quality)
    if spec.kind == "format":
        return _encode(img, spec.ext, spec.quality)
    if spec.kind == "retouch":
        return _encode(retouch(img, spec.edit, rng), spec.ext, spec.quality)
    raise ValueError(f"unknown planted kind {spec.kind!r}")


# -------------------------------------------------------------------------- plan


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _canvas_size(rng: np.random.Generator) -> tuple[int, int]:
    """Picture size: long side 300-1200 px, square or 4:3 either way (PIM shots)."""
    long = int(rng.integers(300, 1201))
    ratio = float(rng.choice((1.0, 1.0, 0.75, 1.333)))
    return (long, round(long * ratio)) if ratio < 1 else (round(long / ratio), long)


def _template_products(
    rng: np.random.Generator, n: int, start: int, used: set[str]
) -> list[Product]:
    """`n` drawn products, some in look-alike families of 2 to 4 (about 40 % of products).

    A family shares brand, template, layout, size and colours; each variant after the
    first changes the dosage and, at random, also the name or the accent colour.
    """
    out: list[Product] = []
    while len(out) < n:
        size = 1 if rng.random() < 0.8 else int(rng.integers(2, 5))
        size = min(size, n - len(out))
        (names, dosages, quantities), templates = _KINDS[int(rng.integers(len(_KINDS)))]
        base = Product(
            key=start + len(out),
            gtin=_new_gtin(rng, used),
            brand=_pick(rng, _BRANDS),
            name=_pick(rng, names),
            dosage=_pick(rng, dosages),
            quantity=_pick(rng, quantities),
            template=_pick(rng, templates),
            primary=_PALETTE[int(rng.integers(len(_PALETTE)))],
            accent=_PALETTE[int(rng.integers(len(_PALETTE)))],
            logo=_pick(rng, _LOGOS),
            layout_seed=int(rng.integers(2**31)),
            size=_canvas_size(rng),
        )
        out.append(base)
        for rank in range(1, size):
            change = _pick(rng, ("dosage", "name", "colour"))
            variant = replace(
                base,
                key=start + len(out),
                gtin=_new_gtin(rng, used),
                family_rank=rank,
                dosage=_pick(rng, [d for d in dosages if d != base.dosage]),
            )
            if change == "name":
                variant = replace(variant, name=_pick(rng, [m for m in names if m != base.name]))
            elif change == "colour":
                colours = [c for c in _PALETTE if c not in (base.accent, base.primary)]
                variant = replace(variant, accent=colours[int(rng.integers(len(colours)))])
            out.append(variant)
    return out


def _photo_products(rng: np.random.Generator, n: int, start: int, used: set[str]) -> list[Product]:
    """`n` products whose picture is a distinct scikit-image photo, resized to 300-1200 px."""
    names = list(available_photos())
    order = rng.permutation(len(names))[:n]
    out = []
    for i, k in enumerate(order):
        with Image.open(_skimage_dir() / names[k]) as im:
            w, h = im.size
        long = int(rng.integers(300, 1201))
        size = (long, max(1, round(h * long / w))) if w >= h else (round(w * long / h), long)
        out.append(
            Product(
                key=start + i,
                gtin=_new_gtin(rng, used),
                brand=_pick(rng, _BRANDS),
                name=_pick(rng, _DRUGS[0]),
                dosage="",
                quantity="",
                template="photo",
                primary=(0, 0, 0),
                accent=(0, 0, 0),
                logo="",
                layout_seed=0,
                size=size,
                photo=names[k],
            )
        )
    return out


def _skimage_dir() -> Path:
    """skimage/data of the installed scikit-image (imported late: only photos need it)."""
    require_scikit_image()
    import skimage.data

    return Path(skimage.data.__file__).parent


def _image_id(p: Product, piece: int) -> str:
    return f"{p.gtin}_PIECE_{piece:02d}"


def _original_specs(
    rng: np.random.Generator, products: list[Product], n_two: int
) -> list[ImageSpec]:
    """PIECE_01 of every product, PIECE_02 (back view) of `n_two` drawn products."""
    drawn = [p.key for p in products if p.photo is None]
    two = set(rng.choice(drawn, size=min(n_two, len(drawn)), replace=False).tolist())
    specs = []
    for p in products:
        kind = "lookalike" if p.family_rank > 0 else "original"
        for piece, view in ((1, "front"), (2, "back")):
            if piece == 2 and p.key not in two:
                continue
            image_id = _image_id(p, piece)
            ext = ".png" if rng.random() < (0.35 if p.template == "label" else 0.12) else ".jpg"
            specs.append(
                ImageSpec(
                    image_id=image_id,
                    product_key=p.key,
                    ext=ext,
                    kind=kind,
                    group_id=image_id,
                    view=view,
                    seed=int(rng.integers(2**31)),
                    quality=int(rng.integers(85, 96)),
                )
            )
    return specs


def _edit_sequence(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """(kind, retouch) of `n` planted pictures: every kind and retouch early, then by weight.

    Why: even a small catalogue (the tests' 30 products) then holds every kind of edit.
    """
    kinds = [str(k) for k in rng.permutation(PLANTED_KINDS)]
    kinds += [str(k) for k in rng.choice(PLANTED_KINDS, size=max(0, n - 5), p=_PLANTED_WEIGHTS)]
    retouches = [str(r) for r in rng.permutation(RETOUCHES)]
    retouches += [_pick(rng, RETOUCHES) for _ in range(n)]
    out, used = [], 0
    for kind in kinds[:n]:
        out.append((kind, retouches[used] if kind == "retouch" else ""))
        used += kind == "retouch"
    return out


def _planted_spec(
    rng: np.random.Generator, src: ImageSpec, dup: Product, piece: int, how: tuple[str, str]
) -> ImageSpec:
    """A planted copy of `src` as picture `piece` of the duplicate product `dup`.

    `how` is (kind, retouch name); the file keeps the original's format except for a
    format change.
    """
    kind, edit = how
    ext, quality = src.ext, int(rng.integers(85, 96))
    if kind == "recompress":
        quality = int(rng.choice([q for q in range(60, 81) if q != src.quality]))
        edit = f"q{quality}" if ext == ".jpg" else "zlib9"
    elif kind == "format":
        ext = ".png" if src.ext == ".jpg" else ".jpg"
        edit = ext[1:]
    image_id = _image_id(dup, piece)
    return ImageSpec(
        image_id=image_id,
        product_key=dup.key,
        ext=ext,
        kind=kind,
        group_id=src.group_id,
        source=src.image_id,
        edit=edit,
        seed=int(rng.integers(2**31)),
        quality=quality,
    )


def plan_catalogue(n_products: int = 160, seed: int = 0) -> Plan:
    """Decide every product and file of the catalogue, without drawing anything.

    `n_products` genuine products (about 8 % photos, the rest drawn packs, 35 % of these
    with a back view), then duplicate entries holding round(0.6 * n_products) planted
    pictures: 1.95 * n_products images in all (312 for the default 160).
    """
    if n_products < 1:
        raise ValueError("n_products must be at least 1")
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    n_photo = min(len(available_photos()), max(1, round(n_products * 0.08)), n_products - 1)
    products = _template_products(rng, n_products - n_photo, 0, used)
    products += _photo_products(rng, n_photo, len(products), used)
    specs = _original_specs(rng, products, round(n_products * 0.35))
    by_product: dict[int, list[ImageSpec]] = {}
    for s in specs:
        by_product.setdefault(s.product_key, []).append(s)
    planted: list[ImageSpec] = []
    n_planted, times_copied = round(n_products * 0.6), dict.fromkeys(by_product, 0)
    edits = _edit_sequence(rng, n_planted)
    while len(planted) < n_planted:
        src_key = int(rng.choice([k for k, t in times_copied.items() if t < 2]))
        times_copied[src_key] += 1
        src_p = products[src_key]
        dup = replace(src_p, key=len(products), gtin=_new_gtin(rng, used, like=src_p.gtin))
        products.append(dup)
        sources = by_product[src_key]
        if len(sources) == 2 and (rng.random() < 0.6 or n_planted - len(planted) < 2):
            sources = [sources[int(rng.integers(2))]]
        for piece, src in enumerate(sources, start=1):
            planted.append(_planted_spec(rng, src, dup, piece, edits[len(planted)]))
    codes = rng.permutation(len(products)) + 266_000
    products = [replace(p, product_id=f"NP{codes[p.key]:07d}") for p in products]
    return Plan(products=tuple(products), images=tuple(specs + planted))


# ------------------------------------------------------------------------- build


def _clean_images_dir(folder: Path) -> None:
    """Remove files a previous build wrote (NextPage-named only), keep anything else."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and _OWN_FILE.match(f.name):
            f.unlink()


def _write_csv(path: Path, header: Sequence[str], rows: list[Sequence[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _display_name(p: Product) -> str:
    """The product's name as a PIM shows it: brand, name, dosage, quantity."""
    return " ".join(x for x in (p.brand, p.name, p.dosage, p.quantity) if x)


def build_demo_catalogue(out_dir: Path, n_products: int = 160, seed: int = 0,
                         variant_families: int = 0) -> DemoCatalogue:
    """Draw the demo catalogue of `plan_catalogue(n_products, seed)` into `out_dir`.

    Writes images/, manifest.csv and truth.csv (see the module docstring); deterministic
    for a seed. Files a previous build left in images/ are replaced. `variant_families`
    adds that many families of packshots on white with edits (npimage_demo.variants).
    truth.csv also says each picture's `edit` and `family_id` (products of one template).
    """
    require_scikit_image()  # before any file is written
    out_dir = Path(out_dir)
    plan = plan_catalogue(n_products, seed)
    images_dir = out_dir / "images"
    _clean_images_dir(images_dir)
    products = plan.products
    files = {s.image_id: images_dir / s.file_name for s in plan.images}
    for spec in plan.images:  # originals come first: planted copies read them
        if spec.source is None:
            img = render_original(products[spec.product_key], spec)
            files[spec.image_id].write_bytes(_encode(img, spec.ext, spec.quality))
        else:
            files[spec.image_id].write_bytes(planted_bytes(files[spec.source], spec))
    ordered = sorted(plan.images, key=lambda s: (products[s.product_key].product_id, s.image_id))
    manifest, truth = out_dir / "manifest.csv", out_dir / "truth.csv"
    extra = _variant_rows(images_dir, variant_families, seed, {p.gtin for p in products})
    _write_csv(
        manifest,
        ("image_id", "product_id", "uri", "reference", "family", "name"),
        extra.manifest + [
            (
                s.image_id,
                products[s.product_key].product_id,
                f"images/{s.file_name}",
                products[s.product_key].gtin,
                products[s.product_key].template,
                _display_name(products[s.product_key]),
            )
            for s in ordered
        ],
    )
    _write_csv(
        truth,
        ("image_id", "group_id", "kind", "expected_band", "edit", "family_id"),
        extra.truth + [(s.image_id, s.group_id, s.kind, EXPECTED_BAND[s.kind], s.edit,
                        _family_id(products[s.product_key])) for s in ordered],
    )
    _write_csv(out_dir / "reading_truth.csv", barcodes.READING_TRUTH_HEADER,
               sorted(barcodes.reading_truth(plan) + extra.reading, key=lambda r: r[0]))
    n_planted = sum(s.source is not None for s in plan.images)
    n_planted += sum(1 for r in extra.truth if r[3])
    return DemoCatalogue(manifest, truth, len(plan.images) + len(extra.manifest), n_planted)


def _family_id(p: Product) -> str:
    """Products drawn from one template and layout share it (look-alike families)."""
    return "" if p.photo is not None else f"layout-{p.layout_seed}"


def _variant_rows(images_dir: Path, n: int, seed: int, used: set[str]):
    """The variant families' files and rows (npimage_demo.variants), none when n is 0."""
    from npimage_demo.variants import VariantRows, add_variant_families

    return add_variant_families(images_dir, n, seed, used) if n else VariantRows([], [], [])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `--out DIR --products N --seed S`; builds the catalogue and says what it wrote."""
    parser = argparse.ArgumentParser(prog="npimage-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder")
    parser.add_argument("--products", type=int, default=160, help="genuine products")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--variant-families", type=int, default=DEMO_VARIANT_FAMILIES,
                        help="families of packshots on white with edits (0: none)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    cat = build_demo_catalogue(args.out, args.products, args.seed, args.variant_families)
    print(
        f"demo catalogue: {cat.n_images} images ({cat.n_planted} planted duplicates) "
        f"in {time.perf_counter() - t0:.1f} s\n  manifest: {cat.manifest}\n  truth:    {cat.truth}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
