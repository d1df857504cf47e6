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
