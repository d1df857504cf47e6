-- Version 5 of the warehouse: what the packs say (npimage.reading, issue #11). Boxes are in
-- pixels of the picture as read (image_reads.width x height). Views: views.sql
-- (catalogue_gtin_mismatch).
CREATE TABLE image_codes (
    client_id VARCHAR NOT NULL,
    image_id VARCHAR NOT NULL,
    sha256 VARCHAR,
    seq INTEGER,
    symbology VARCHAR,      -- EAN-13 | UPC-A | EAN-8 | ITF-14 | GS1-128 | Code 128 | DataMatrix | QR
    text VARCHAR,           -- decoded text (GS1 strings in HRI form)
    gtin VARCHAR,           -- GTIN-14, only when its check digit holds
    gs1 BOOLEAN,
    x0 INTEGER, y0 INTEGER, x1 INTEGER, y1 INTEGER,
    note VARCHAR            -- why a code carries no GTIN
);
CREATE TABLE image_text (
    client_id VARCHAR NOT NULL,
    image_id VARCHAR NOT NULL,
    sha256 VARCHAR,
    line INTEGER,
    text VARCHAR,
    confidence FLOAT,
    x0 INTEGER, y0 INTEGER, x1 INTEGER, y1 INTEGER,
    tokens VARCHAR,         -- normalised words, space-separated
    quantities VARCHAR,     -- JSON list of {value, value2, unit, per, text}
    strengths VARCHAR       -- the quantities, canonical ('5 mg; 250 ml')
);
CREATE TABLE image_reads (
    client_id VARCHAR NOT NULL,
    image_id VARCHAR NOT NULL,
    sha256 VARCHAR,
    reader VARCHAR,         -- codes | text
    version VARCHAR,
    n_found INTEGER,
    width INTEGER,
    height INTEGER,
    computed_at TIMESTAMPTZ
);
