"""Reading the pack: barcodes and 2-D codes (GTINs), printed text and quantities per image.

Library only (no Airflow): `codes.read_codes`, `text.read_text`, `quantities.parse_quantities`,
`gtin` (check digits, GTIN-14, GS1 element strings), `packs.compare_packs` (why two
pictures show different products) and `stage` (the run's reading stages).
"""

from npimage.reading.packs import PackReading, compare_packs, load_pack_readings
from npimage.reading.quantities import Quantity, parse_quantities, parse_quantity

__all__ = ["PackReading", "Quantity", "compare_packs", "load_pack_readings", "parse_quantities",
           "parse_quantity"]
