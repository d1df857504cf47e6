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

-- Pack reading (npimage.reading): codes and printed text read on each image, loaded with
-- the match tables in the same transaction. Boxes are in pixels of the picture as read.
CREATE TABLE IF NOT EXISTS npimage_image_code (
    client_id  text NOT NULL,
    image_id   text NOT NULL,
    seq        integer NOT NULL,
    sha256     text,
    symbology  text NOT NULL,                    -- EAN-13 | UPC-A | EAN-8 | ITF-14 | GS1-128 | DataMatrix | QR
    text       text,                             -- decoded text (GS1 strings in HRI form)
    gtin       text,                             -- GTIN-14, only when its check digit holds
    gs1        boolean,
    x0 integer, y0 integer, x1 integer, y1 integer,
    note       text,
    PRIMARY KEY (client_id, image_id, seq)
);
CREATE INDEX IF NOT EXISTS npimage_image_code_gtin ON npimage_image_code (client_id, gtin);

CREATE TABLE IF NOT EXISTS npimage_image_text (
    client_id  text NOT NULL,
    image_id   text NOT NULL,
    line       integer NOT NULL,
    sha256     text,
    text       text,
    confidence real,
    x0 integer, y0 integer, x1 integer, y1 integer,
    tokens     text,                             -- normalised words, space-separated
    quantities jsonb,                            -- [{value, value2, unit, per, text}]
    strengths  text,                             -- '5 mg; 250 ml'
    PRIMARY KEY (client_id, image_id, line)
);

-- GTIN-14 of a code when it is a valid GTIN-8/12/13/14 (GS1 check digit), else NULL.
CREATE OR REPLACE FUNCTION npimage_gtin14(code text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN btrim(code) ~ '^([0-9]{8}|[0-9]{12,14})$'
                 AND (10 - (SELECT sum(substr(lpad(btrim(code), 14, '0'), i, 1)::int
                                       * CASE WHEN i % 2 = 1 THEN 3 ELSE 1 END)
                            FROM generate_series(1, 13) AS i) % 10) % 10
                     = substr(lpad(btrim(code), 14, '0'), 14, 1)::int
                THEN lpad(btrim(code), 14, '0') END
$$;

-- Catalogue errors: images whose codes carry GTINs, none of them np_reference.gtin of the
-- image's reference. Created when NextPage's tables exist.
DO $$
BEGIN
    IF to_regclass('np_reference') IS NOT NULL AND to_regclass('np_image') IS NOT NULL THEN
        EXECUTE $v$
        CREATE OR REPLACE VIEW npimage_catalogue_gtin_mismatch AS
        SELECT im.client_id, im.image_id, r.product_id, r.reference_id, r.gtin AS reference_gtin,
               array_agg(DISTINCT c.gtin ORDER BY c.gtin) AS image_gtins
        FROM np_image AS im
        JOIN np_reference AS r
          ON r.client_id = im.client_id AND r.reference_id = im.reference_id
        JOIN npimage_image_code AS c
          ON c.client_id = im.client_id AND c.image_id = im.image_id AND c.gtin IS NOT NULL
        WHERE npimage_gtin14(r.gtin) IS NOT NULL
        GROUP BY im.client_id, im.image_id, r.product_id, r.reference_id, r.gtin
        HAVING NOT npimage_gtin14(r.gtin) = ANY (array_agg(c.gtin))
        $v$;
    END IF;
END
$$;
