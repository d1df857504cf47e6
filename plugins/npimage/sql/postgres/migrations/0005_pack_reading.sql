-- Version 5 of the backend tables: what the packs say (npimage.reading, issue #11).
-- Codes and printed text read on each image, loaded with
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
