-- Warehouse tables: the latest published run of each client (client_id partitions every
-- table), plus the history of runs. Created if absent; columns follow docs/DESIGN.md.
CREATE TABLE IF NOT EXISTS images (
    client_id VARCHAR NOT NULL,
    image_id VARCHAR NOT NULL,
    product_id VARCHAR,
    reference VARCHAR,
    uri VARCHAR,
    size_bytes BIGINT,
    modified_at TIMESTAMPTZ,
    run_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS signatures (
    client_id VARCHAR NOT NULL,
    image_id VARCHAR NOT NULL,
    sha256 VARCHAR,
    size_bytes BIGINT,
    width INTEGER,
    height INTEGER,
    ahash BIGINT,
    dhash BIGINT,
    phash BIGINT,
    fv FLOAT[],
    fv_model VARCHAR,
    computed_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS rejects (
    client_id VARCHAR NOT NULL,
    image_id VARCHAR,
    uri VARCHAR,
    stage VARCHAR,
    reason VARCHAR
);
CREATE TABLE IF NOT EXISTS image_matches (
    client_id VARCHAR NOT NULL,
    image_id VARCHAR NOT NULL,
    match_image_id VARCHAR NOT NULL,
    rank INTEGER,
    score FLOAT,
    band VARCHAR,
    dah FLOAT,
    ddh FLOAT,
    dph FLOAT,
    dfv FLOAT,
    same_bytes BOOLEAN,
    run_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS product_matches (
    client_id VARCHAR NOT NULL,
    product_id VARCHAR NOT NULL,
    match_product_id VARCHAR NOT NULL,
    score FLOAT,
    band VARCHAR,
    n_image_pairs INTEGER,
    best_image_id VARCHAR,
    best_match_image_id VARCHAR,
    run_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    client_id VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    mode VARCHAR,
    fv_model VARCHAR,
    top_k INTEGER,
    threshold FLOAT,
    weights VARCHAR,
    n_images BIGINT,
    n_rejects BIGINT,
    n_computed BIGINT,
    n_image_matches BIGINT,
    n_product_matches BIGINT,
    started_at TIMESTAMPTZ,
    published_at TIMESTAMPTZ
);

-- Pack reading (npimage.reading): codes and printed text read on each image. Boxes are in
-- pixels of the picture as read (image_reads.width x height).
CREATE TABLE IF NOT EXISTS image_codes (
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
CREATE TABLE IF NOT EXISTS image_text (
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
CREATE TABLE IF NOT EXISTS image_reads (
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
