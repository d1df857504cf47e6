"""Arrow schemas of the data contracts (see docs/DESIGN.md, "Contracts").

Names are stable: SQL in `sql/` and other tools depend on them. Identifiers are strings;
the three perceptual hashes are 64-bit patterns stored as signed int64 (the bits of the
unsigned hash reinterpreted, so `x.view(np.uint64)` gives back the hash).
"""

from __future__ import annotations

import pyarrow as pa

CATALOG = pa.schema(
    [
        ("client_id", pa.string()),
        ("image_id", pa.string()),
        ("product_id", pa.string()),
        ("reference", pa.string()),
        ("uri", pa.string()),
        ("size_bytes", pa.int64()),
        ("modified_at", pa.timestamp("us", tz="UTC")),
    ]
)

SIGNATURES = pa.schema(
    [
        ("client_id", pa.string()),
        ("image_id", pa.string()),
        ("sha256", pa.string()),
        ("size_bytes", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("ahash", pa.int64()),
        ("dhash", pa.int64()),
        ("phash", pa.int64()),
        ("fv", pa.list_(pa.float16())),
        ("fv_model", pa.string()),
        ("computed_at", pa.timestamp("us", tz="UTC")),
        # local-detail signature for verification (npimage.matching.verify): grey 128x128
        # + chroma 2x32x32 of the content box, uint8; NULL in signatures of npimage < 0.3
        ("detail", pa.binary()),
        # the definition the hashes and detail were computed with (SIGNATURE_VERSION);
        # NULL in signatures of npimage < 0.4: recomputed by the next run
        ("sig_version", pa.int16()),
        # the report's thumbnail (JPEG, npimage.ingest.thumbnail), made from the decode
        ("thumb", pa.binary()),
    ]
)

#: Version of the signature values (hashes, detail): a stored signature of another
#: version is recomputed by the next run (npimage.ingest.signatures.is_current).
#: 2: hashes in NumPy from one grey copy; JPEG DCT-scaled decode; thumbnails.
SIGNATURE_VERSION = 2

REJECTS = pa.schema(
    [
        ("client_id", pa.string()),
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
    ]
)

IMAGE_MATCHES = pa.schema(
    [
        ("client_id", pa.string()),
        ("image_id", pa.string()),
        ("match_image_id", pa.string()),
        ("rank", pa.int32()),
        ("score", pa.float32()),
        ("band", pa.string()),
        ("dah", pa.float32()),
        ("ddh", pa.float32()),
        ("dph", pa.float32()),
        ("dfv", pa.float32()),
        ("same_bytes", pa.bool_()),
        ("run_id", pa.string()),
        # verification (npimage.matching.verify): the score before it, whether the pair
        # was checked, and why it moved (or what it found)
        ("score_before", pa.float32()),
        ("verified", pa.bool_()),
        ("verify_reason", pa.string()),
        ("rejected", pa.bool_()),  # a reviewer said "not the same" (npimage.review.store)
    ]
)

PRODUCT_MATCHES = pa.schema(
    [
        ("client_id", pa.string()),
        ("product_id", pa.string()),
        ("match_product_id", pa.string()),
        ("score", pa.float32()),
        ("band", pa.string()),
        ("n_image_pairs", pa.int32()),
        ("best_image_id", pa.string()),
        ("best_match_image_id", pa.string()),
        ("run_id", pa.string()),
        ("score_before", pa.float32()),  # best image pair's score before verification
        ("verify_reason", pa.string()),  # verification of the best image pair
        ("rejected", pa.bool_()),  # a reviewer said "not the same" (npimage.review.store)
    ]
)


# -- pack reading (npimage.reading): codes and printed text per image ---------------------

#: One row per code read on an image (box in pixels of the stored picture).
IMAGE_CODES = pa.schema(
    [
        ("client_id", pa.string()),
        ("image_id", pa.string()),
        ("sha256", pa.string()),
        ("seq", pa.int32()),
        ("symbology", pa.string()),
        ("text", pa.string()),
        ("gtin", pa.string()),  # GTIN-14, only when its check digit holds
        ("gs1", pa.bool_()),
        ("x0", pa.int32()),
        ("y0", pa.int32()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),
        ("note", pa.string()),
    ]
)

#: One row per line of printed text (OCR).
IMAGE_TEXT = pa.schema(
    [
        ("client_id", pa.string()),
        ("image_id", pa.string()),
        ("sha256", pa.string()),
        ("line", pa.int32()),
        ("text", pa.string()),
        ("confidence", pa.float32()),
        ("x0", pa.int32()),
        ("y0", pa.int32()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),
        ("tokens", pa.string()),  # normalised words, space-separated
        ("quantities", pa.string()),  # JSON list of {value, value2, unit, per, text}
        ("strengths", pa.string()),  # the quantities, canonical, '; '-separated
    ]
)

#: One row per (image, reader) that ran: tells "read, nothing found" from "not read".
IMAGE_READS = pa.schema(
    [
        ("client_id", pa.string()),
        ("image_id", pa.string()),
        ("sha256", pa.string()),
        ("reader", pa.string()),  # codes | text
        ("version", pa.string()),  # decoder / OCR package and version
        ("n_found", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("computed_at", pa.timestamp("us", tz="UTC")),
    ]
)

# -- families (#18) ----------------------------------------------------------------------

#: The family of each product, part of the catalogue snapshot (families.parquet of a run).
FAMILIES = pa.schema(
    [
        ("client_id", pa.string()),
        ("product_id", pa.string()),
        ("family", pa.string()),
    ]
)

#: A product's predicted families (top 3, calibrated), its current family's probability,
#: the misfiled flag and the evidence (JSON list of the neighbour images that voted).
FAMILY_PREDICTIONS = pa.schema(
    [
        ("client_id", pa.string()),
        ("product_id", pa.string()),
        ("family", pa.string()),
        ("predicted_family", pa.string()),
        ("confidence", pa.float32()),
        ("family_2", pa.string()),
        ("confidence_2", pa.float32()),
        ("family_3", pa.string()),
        ("confidence_3", pa.float32()),
        ("current_confidence", pa.float32()),
        ("misfiled", pa.bool_()),
        ("n_images", pa.int32()),
        ("n_votes", pa.int32()),
        ("evidence", pa.string()),
        ("predicted_run_id", pa.string()),
        ("run_id", pa.string()),
    ]
)
