"""What the pack of each image says, for the report's image pages (npimage.reading).

Per image: the codes and text lines read, with boxes in the pixels of the picture as read
(drawn over the picture as an SVG overlay), and the catalogue error when the image's
GTIN is not its reference's. Warehouses published before pack reading existed have no
such tables: pages then simply show no pack section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from npimage.sqlfiles import load_sql


@dataclass
class PackView:
    """The pack reading of one image."""

    width: int = 0
    height: int = 0
    readers: set[str] = field(default_factory=set)
    codes: list[dict] = field(default_factory=list)
    lines: list[dict] = field(default_factory=list)
    mismatch: dict | None = None  # {"reference_gtin": ..., "image_gtins": [...]}


def _rows(con: duckdb.DuckDBPyConnection, name: str, params: dict) -> list[tuple]:
    try:
        return con.execute(load_sql("duckdb", name), params).fetchall()
    except duckdb.CatalogException:  # a warehouse without the pack-reading tables
        return []


def packs_for(con: duckdb.DuckDBPyConnection, client_id: str, first: str,
              last: str) -> dict[str, PackView]:
    """PackView of every image read whose id is in [first, last]."""
    params = {"client": client_id, "first": first, "last": last}
    out: dict[str, PackView] = {}
    for image_id, reader, width, height in _rows(con, "report_image_reads", params):
        view = out.setdefault(image_id, PackView())
        view.readers.add(reader)
        view.width, view.height = width or view.width, height or view.height
    for image_id, sym, text, gtin, note, x0, y0, x1, y1 in _rows(con, "report_image_codes",
                                                                  params):
        out.setdefault(image_id, PackView()).codes.append(
            {"symbology": sym, "text": text, "gtin": gtin, "note": note,
             "box": (x0, y0, x1 - x0, y1 - y0)})
    for image_id, text, conf, strengths, x0, y0, x1, y1 in _rows(con, "report_image_text",
                                                                  params):
        out.setdefault(image_id, PackView()).lines.append(
            {"text": text, "confidence": conf, "strengths": strengths,
             "box": (x0, y0, x1 - x0, y1 - y0)})
    for image_id, reference_gtin, image_gtins in _rows(con, "report_gtin_mismatch", params):
        out.setdefault(image_id, PackView()).mismatch = {
            "reference_gtin": reference_gtin, "image_gtins": list(image_gtins)}
    return out
