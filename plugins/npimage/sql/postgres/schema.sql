-- Tables npimage writes into the backend. Idempotent. Every table is partitioned logically
-- by client_id; a load replaces one client's rows.

-- Two first runs creating the tables at once would collide in the catalogue: one at a time.
SELECT pg_advisory_xact_lock(hashtext('npimage_schema'));

-- One row per (client, run): lifecycle, counts and settings of a pipeline run.
CREATE TABLE IF NOT EXISTS npimage_run (
    client_id         text NOT NULL,
    run_id            text NOT NULL,
    status            text NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    mode              text,                      -- full | incremental
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    n_images          bigint,                    -- catalogue rows of the run
    n_changed         bigint,                    -- new or changed images
    n_deleted         bigint,                    -- images gone since the previous catalogue
    n_image_matches   bigint,                    -- rows loaded into npimage_image_match
    n_product_matches bigint,                    -- rows loaded into npimage_product_match
    model             text,                      -- feature-vector model id, NULL when FV is off
    thresholds        jsonb,                     -- threshold, top_k, bands, weights
    watermark         timestamptz,               -- max np_image.updated_at the run saw
    details           jsonb,                     -- any other counts
    error             text,                      -- why a failed run failed
    PRIMARY KEY (client_id, run_id)
);
CREATE INDEX IF NOT EXISTS npimage_run_last_success
    ON npimage_run (client_id, finished_at DESC) WHERE status = 'success';

-- Nearest images: both directions of each pair, top-k per image, score >= threshold.
CREATE TABLE IF NOT EXISTS npimage_image_match (
    client_id      text NOT NULL,
    image_id       text NOT NULL,
    match_image_id text NOT NULL,
    rank           integer NOT NULL,
    score          real NOT NULL,
    band           text NOT NULL,
    dah            real,                         -- 1 - hamming/64 of average hashes
    ddh            real,                         -- same for difference hashes
    dph            real,                         -- same for perceptual hashes
    dfv            real,                         -- feature-vector cosine, NULL when FV is off
    same_bytes     boolean,
    run_id         text,
    PRIMARY KEY (client_id, image_id, match_image_id)
);

-- Products that share at least one matching image pair.
CREATE TABLE IF NOT EXISTS npimage_product_match (
    client_id           text NOT NULL,
    product_id          text NOT NULL,
    match_product_id    text NOT NULL,
    score               real NOT NULL,
    band                text NOT NULL,
    n_image_pairs       integer,
    best_image_id       text,
    best_match_image_id text,
    run_id              text,
    PRIMARY KEY (client_id, product_id, match_product_id)
);
CREATE INDEX IF NOT EXISTS npimage_product_match_score
    ON npimage_product_match (client_id, score DESC);

-- The score bands, so that SQL can say "very_similar or better" by name.
CREATE TABLE IF NOT EXISTS npimage_band (
    band        text PRIMARY KEY,
    lower_bound real NOT NULL,
    rank        integer NOT NULL                 -- 1 = best band
);
