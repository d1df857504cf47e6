"""Variant families for the demo: packshots on white, one template, another strength,
barcode, name or accent colour; and same-image edits and retouches of every variant.

Why (issue #12): the verification stage must keep two strengths of one template apart
while keeping every edit of one picture together. These families give the truth for both:
variants of one family are *different* products (never at >= 0.95), and each variant has
edits whose band is known, including geometric retouches of recorded strength (crop %,
rotation degrees, mirror, added margins) so that a fit on mild edits can be measured on
strong ones.

`add_variant_families(images_dir, n_families, seed, used_gtins)` draws the files and returns
the manifest and truth rows; `npimage_demo.catalogue.build_demo_catalogue` calls it (its
`variant_families` argument). Truth rows: kind `lookalike` for the variants (family_id set),
kinds recompress | resize | format | mode (band `same`) and retouch (band `retouched`) for
edits, with the edit and its strength in `edit` ("crop 7.5 %", "rotate -4.2", "mirror").
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from npimage_demo import barcodes
from npimage_demo import catalogue as cat

#: What a variant changes, in turns: the printed strength, only the barcode (another GTIN,
#: same text), the product name, the accent colour (a stripe and the strength's ink).
CHANGES = ("dosage", "barcode", "name", "colour")
#: Edits that keep the picture (band `same`) and retouches (band `retouched`), in turns.
SAME_EDITS = ("recompress", "resize", "format", "mode")
RETOUCHES = ("tone", "sharpen", "sticker", "crop", "rotate", "mirror", "margin")
#: Strength ranges of the geometric retouches (the wide range: up to 10 % and 5 degrees).
CROP_RANGE = (0.01, 0.10)
ROTATE_RANGE = (0.5, 5.0)
MARGIN_RANGE = (0.05, 0.20)


@dataclass(frozen=True)
class VariantRows:
    """Rows for manifest.csv (image_id, product_id, uri, reference, family, name) and truth.csv
    (image_id, group_id, kind, expected_band, edit, family_id)."""

    manifest: list[tuple[str, str, str, str, str, str]]
    truth: list[tuple[str, str, str, str, str, str]]
    #: rows of reading_truth.csv (npimage_demo.barcodes.READING_TRUTH_HEADER)
    reading: list[tuple[str, ...]]


def _reading_row(image_id: str, shown: cat.Product, reference: str,
                 original: bool) -> tuple[str, ...]:
    """A reading_truth.csv row: the code and strength `shown`'s pack prints, against the
    manifest reference of the image (an edit has a reference of its own: a mismatch)."""
    printed = barcodes.printed_gtin(shown.gtin)
    mismatch = printed.zfill(14) != reference.zfill(14)
    injected = original and printed != shown.gtin
    strength = shown.dosage if barcodes._shows_strength(shown.template, "front") else ""
    return (image_id, printed.zfill(14), barcodes.symbology(printed), reference.zfill(14),
            str(int(mismatch)), str(int(injected)), strength)


def _on_white(p: cat.Product, seed: int) -> Image.Image:
    """A packshot of `p` on a plain white backdrop."""
    img = Image.new("RGB", p.size, (255, 255, 255))
    cat._RENDERERS[p.template](img, p, "front", np.random.default_rng(seed))
    return img


def _family(rng: np.random.Generator, used: set[str], size: int) -> list[tuple[cat.Product, str]]:
    """A base product and size-1 variants, each changing one thing (CHANGES in turns)."""
    (names, dosages, quantities), templates = cat._KINDS[int(rng.integers(len(cat._KINDS)))]
    base = cat.Product(
        key=0, gtin=cat._new_gtin(rng, used), brand=cat._pick(rng, cat._BRANDS),
        name=cat._pick(rng, names), dosage=cat._pick(rng, dosages),
        quantity=cat._pick(rng, quantities), template=cat._pick(rng, templates),
        primary=cat._PALETTE[int(rng.integers(len(cat._PALETTE)))],
        accent=cat._PALETTE[int(rng.integers(len(cat._PALETTE)))],
        logo=cat._pick(rng, cat._LOGOS), layout_seed=int(rng.integers(2**31)),
        size=cat._canvas_size(rng))
    out = [(base, "base")]
    first = int(rng.integers(len(CHANGES)))
    for rank in range(1, size):
        change = CHANGES[(first + rank) % len(CHANGES)]
        v = replace(base, gtin=cat._new_gtin(rng, used), family_rank=rank)
        if change == "dosage":
            v = replace(v, dosage=cat._pick(rng, [d for d in dosages if d != base.dosage]))
        elif change == "name":
            v = replace(v, name=cat._pick(rng, [n for n in names if n != base.name]))
        elif change == "colour":
            colours = [c for c in cat._PALETTE if c not in (base.accent, base.primary)]
            v = replace(v, accent=colours[int(rng.integers(len(colours)))])
        out.append((v, change))
    return out


def _encode(img: Image.Image, ext: str, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG" if ext == ".png" else "JPEG", quality=quality)
    return buf.getvalue()


def same_edit(img: Image.Image, name: str, rng: np.random.Generator) -> tuple[bytes, str, str]:
    """(bytes, extension, description) of an edit that keeps the picture."""
    if name == "recompress":
        q = int(rng.integers(40, 81))
        return _encode(img, ".jpg", q), ".jpg", f"q{q}"
    if name == "resize":
        s = float(rng.choice((rng.uniform(0.5, 0.8), rng.uniform(1.2, 1.5))))
        size = (max(64, round(img.width * s)), max(64, round(img.height * s)))
        return _encode(img.resize(size, Image.Resampling.LANCZOS), ".jpg"), ".jpg", f"x{s:.2f}"
    if name == "format":
        return _encode(img, ".png"), ".png", "png"
    if name == "mode":  # a palette PNG: the pixel mode changes, the picture does not
        return _encode(img.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), ".png"), \
            ".png", "P"
    raise ValueError(f"unknown edit {name!r}")


def geometric(img: Image.Image, name: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A retouch (tone, sharpen, sticker, crop, rotate, mirror, margin) and its strength."""
    if name == "tone":
        b = 1 + rng.choice((-1, 1)) * rng.uniform(0.05, 0.1)
        return ImageEnhance.Brightness(img).enhance(b), f"tone {b:.2f}"
    if name == "sharpen":
        return img.filter(ImageFilter.UnsharpMask(radius=2, percent=120)), "sharpen"
    if name == "sticker":
        return cat._sticker(img, rng), "sticker"
    if name == "crop":
        f = float(rng.uniform(*CROP_RANGE))
        left, top = rng.uniform(0, f) * img.width, rng.uniform(0, f) * img.height
        box = (round(left), round(top), round(img.width * (1 - f) + left),
               round(img.height * (1 - f) + top))
        return img.crop(box), f"crop {100 * f:.1f} %"
    if name == "rotate":
        a = float(rng.choice((-1, 1)) * rng.uniform(*ROTATE_RANGE))
        return img.rotate(a, Image.Resampling.BICUBIC, fillcolor=(255, 255, 255)), f"rotate {a:.1f}"
    if name == "mirror":
        return ImageOps.mirror(img), "mirror"
    if name == "margin":
        m = float(rng.uniform(*MARGIN_RANGE))
        border = (round(img.width * m), round(img.height * m * rng.uniform(0.5, 1.0)))
        return ImageOps.expand(img, border, fill=(255, 255, 255)), f"margin {100 * m:.0f} %"
    raise ValueError(f"unknown retouch {name!r}")


def add_variant_families(images_dir: Path, n_families: int, seed: int,
                         used: set[str]) -> VariantRows:
    """Draw `n_families` families of 3-4 products on white, each variant with one edit that
    keeps the picture and one retouch; write the files, return the rows."""
    rng = np.random.default_rng(seed + 1_000_003)
    manifest, truth, reading = [], [], []
    n_edit = 0
    for f in range(n_families):
        family_id = f"family-{seed}-{f:03d}"
        for product, change in _family(rng, used, int(rng.integers(3, 5))):
            pid = f"NPV{seed % 100:02d}{f:03d}{product.family_rank}"
            img = _on_white(product, int(rng.integers(2**31)))
            image_id = f"{product.gtin}_PIECE_01"
            (images_dir / f"{image_id}.jpg").write_bytes(_encode(img, ".jpg"))
            name = cat._display_name(product)
            manifest.append((image_id, pid, f"images/{image_id}.jpg", product.gtin,
                             product.template, name))
            truth.append((image_id, image_id, "lookalike" if product.family_rank else "original",
                          "", change, family_id))
            reading.append(_reading_row(image_id, product, product.gtin, original=True))
            for kind in ("same", "retouch"):
                dup_gtin = cat._new_gtin(rng, used)
                dup_id = f"{dup_gtin}_PIECE_01"
                er = np.random.default_rng(int(rng.integers(2**31)))
                if kind == "same":
                    name = SAME_EDITS[n_edit % len(SAME_EDITS)]
                    data, ext, desc = same_edit(img, name, er)
                    row_kind, band = name, "same"
                else:
                    name = RETOUCHES[n_edit % len(RETOUCHES)]
                    out, desc = geometric(img, name, er)
                    ext = ".jpg"
                    data = _encode(out, ext)
                    row_kind, band = "retouch", "retouched"
                (images_dir / f"{dup_id}{ext}").write_bytes(data)
                manifest.append((dup_id, f"{pid}D{kind[0]}", f"images/{dup_id}{ext}", dup_gtin,
                                 product.template, name))
                truth.append((dup_id, image_id, row_kind, band, desc, family_id))
                reading.append(_reading_row(dup_id, product, dup_gtin, original=False))
            n_edit += 1
    return VariantRows(manifest, truth, reading)
