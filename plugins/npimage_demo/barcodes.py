"""Pack codes of the demo catalogue: legible barcodes, injected GTIN errors, reading truth.

Why: the pack readers (npimage.reading) are measured on the demo's packshots, so the
barcodes there must be real symbols a scanner reads (pixel-aligned bars, quiet zones,
PREFERRED_MODULE pixels per module where the picture allows) and the truth must say
what each picture prints: its GTIN, its strength, and whether that GTIN disagrees with
the catalogue.

- `draw_barcode(draw, box, gtin)`: EAN-13 (GTIN-13, or GTIN-14 with indicator 0) or
  ITF-14 in `box`, or along the picture's bottom (right) edge when the box is too small
  for PREFERRED_MODULE-pixel bars.
- `printed_gtin(gtin)`: the GTIN the artwork of a product carries. For about
  INJECTED_SHARE of products it is another valid GTIN (a pack printed with a wrong
  code: the catalogue error the GTIN check must find).
- `reading_truth(plan)`: rows of reading_truth.csv (see build_demo_catalogue).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

#: Narrow bar width in pixels: 3 keeps a symbol readable after a 50 % resize.
PREFERRED_MODULE = 3
#: Share of products whose pack prints a wrong GTIN.
INJECTED_SHARE = 0.05
READING_TRUTH_HEADER = ("image_id", "printed_gtin", "symbology", "reference_gtin",
                        "gtin_mismatch", "injected", "strength")
_BLACK = (0, 0, 0)


def _check_digit(body: str) -> int:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def printed_gtin(gtin: str) -> str:
    """The GTIN printed on the product's pack: its own, or for ~5 % of products a wrong one.

    Deterministic in the GTIN. The wrong code is a valid GTIN-13 (same prefix, other item
    number), so only the catalogue check can tell it is wrong.
    """
    h = int(hashlib.sha256(f"wrong-artwork:{gtin}".encode()).hexdigest(), 16)
    if h % 10_000 >= INJECTED_SHARE * 10_000:
        return gtin
    code = gtin[-13:]
    item = (int(code[7:12]) + 1 + (h >> 20) % 99_998) % 100_000
    body = code[:7] + f"{item:05d}"
    wrong = body + str(_check_digit(body))
    return ("0" + wrong) if len(gtin) == 14 else wrong


def symbology(gtin: str) -> str:
    """What draw_barcode prints for this GTIN."""
    return "ITF-14" if len(gtin) == 14 and gtin[0] != "0" else "EAN-13"


def _symbol(gtin: str, module: int, height: int) -> Image.Image:
    """The symbol of `gtin` on white with its digits: `module` pixels per narrow bar."""
    from npimage_demo.catalogue import _text_center, ean13_modules, itf14_widths

    if symbology(gtin) == "ITF-14":
        widths = [module if w == 2 else round(2.5 * module) for w in itf14_widths(gtin)]
        quiet = 10 * module
    else:
        widths = [len(run) * module for run in _runs(ean13_modules(gtin[-13:]))]
        quiet = 11 * module
    width = sum(widths) + 2 * quiet
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    text_h = height * 0.2
    bar_y1 = height - text_h * 1.1
    x = quiet
    for i, w in enumerate(widths):
        if i % 2 == 0:
            draw.rectangle((x, round(text_h * 0.3), x + w - 1, round(bar_y1)), fill=_BLACK)
        x += w
    _text_center(draw, gtin if symbology(gtin) == "ITF-14" else gtin[-13:],
                 (0, bar_y1, width, height), _BLACK)
    return img


def _runs(modules: str) -> list[str]:
    """Runs of equal modules, starting with a dark one ('101...' -> ['1', '0', '1', ...])."""
    out: list[str] = []
    for m in modules:
        if out and out[-1][0] == m:
            out[-1] += m
        else:
            out.append(m)
    return out


def draw_barcode(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float],
                 gtin: str) -> None:
    """Draw `gtin` as a scannable EAN-13 or ITF-14 with its digits.

    In `box` when it holds bars of PREFERRED_MODULE pixels; else as a strip along the
    bottom edge of the picture (where packshots have backdrop, not print), or upright
    along the right edge when the picture is too narrow, or, when neither fits, along
    the bottom with the widest bars that fit. Bars are whole pixels.
    """
    img: Image.Image = draw._image
    x0, y0, x1, y1 = box
    units = 113 if symbology(gtin) == "EAN-13" else 166
    in_box = int((x1 - x0) / units) >= PREFERRED_MODULE
    module = int((x1 - x0) / units) if in_box else PREFERRED_MODULE
    vertical = not in_box and units * module > img.width - 4 and units * module <= img.height - 4
    if not in_box and not vertical:
        module = min(module, max(1, (img.width - 4) // units))
    height = round(y1 - y0) if in_box else round(min(max(y1 - y0, 16 * module),
                                                     0.16 * img.height))
    sym = _symbol(gtin, module, max(height, 12 * module))
    if vertical:
        sym = sym.rotate(90, expand=True)
        left, top = img.width - sym.width - 2, round((img.height - sym.height) / 2)
    elif in_box:
        left, top = round((x0 + x1 - sym.width) / 2), round(y0)
    else:
        left = round((x0 + x1 - sym.width) / 2)
        top = img.height - sym.height - 2
    left = max(0, min(left, img.width - sym.width))
    top = max(0, min(top, img.height - sym.height))
    img.paste(sym, (left, top))


def _shows_strength(template: str, view: str) -> bool:
    """Whether a picture prints the product's dosage (front views; blister backs too)."""
    return template != "photo" and (view == "front" or template == "blister")


def reading_truth(plan: Any) -> list[Sequence[str]]:
    """Rows of reading_truth.csv for a catalogue plan (npimage_demo.catalogue.Plan).

    printed_gtin: GTIN-14 of the code the picture prints ('' for photos); reference_gtin:
    GTIN-14 of the image's product in the manifest; gtin_mismatch: 1 when they differ
    (a planted duplicate shows its source's pack; injected: a pack printed with a wrong
    code); strength: the dosage printed on the picture ('' when it prints none).
    """
    products = plan.products
    specs = {s.image_id: s for s in plan.images}
    rows: list[Sequence[str]] = []
    for spec in plan.images:
        shown = specs[spec.source] if spec.source else spec
        p_shown, p_ref = products[shown.product_key], products[spec.product_key]
        ref = p_ref.gtin.zfill(14)
        if p_shown.photo is not None:
            rows.append((spec.image_id, "", "", ref, "0", "0", ""))
            continue
        printed = printed_gtin(p_shown.gtin)
        injected = printed != p_shown.gtin
        mismatch = printed.zfill(14) != ref
        strength = p_shown.dosage if _shows_strength(p_shown.template, shown.view) else ""
        rows.append((spec.image_id, printed.zfill(14), symbology(printed), ref,
                     str(int(mismatch)), str(int(injected and spec.source is None)), strength))
    return sorted(rows, key=lambda r: r[0])
