-- NextPage source tables that npimage reads (a PIM's client → product → reference → image).
-- In production these tables belong to NextPage and already exist; this DDL creates them
-- for tests and the demo. Idempotent.
CREATE TABLE IF NOT EXISTS np_client (
    client_id  text PRIMARY KEY,
    name       text,
    active     boolean NOT NULL DEFAULT true
);

CREATE TABLE IF NOT EXISTS np_product (
    client_id  text NOT NULL REFERENCES np_client (client_id) ON DELETE CASCADE,
    product_id text NOT NULL,
    name       text,
    family     text,
    PRIMARY KEY (client_id, product_id)
);

CREATE TABLE IF NOT EXISTS np_reference (
    client_id    text NOT NULL,
    reference_id text NOT NULL,
    product_id   text NOT NULL,
    gtin         text,
    PRIMARY KEY (client_id, reference_id),
    FOREIGN KEY (client_id, product_id)
        REFERENCES np_product (client_id, product_id) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS np_image (
    client_id    text NOT NULL,
    image_id     text NOT NULL,
    reference_id text NOT NULL,
    uri          text NOT NULL,          -- file path or fsspec URL of the image bytes
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, image_id),
    FOREIGN KEY (client_id, reference_id)
        REFERENCES np_reference (client_id, reference_id) ON DELETE CASCADE
);

-- Incremental extraction reads one client's rows changed after a watermark.
CREATE INDEX IF NOT EXISTS np_image_client_updated ON np_image (client_id, updated_at);
CREATE INDEX IF NOT EXISTS np_image_client_reference ON np_image (client_id, reference_id);
