-- Version 3: families (#18).
-- Family of each product predicted from its images' nearest neighbours (npimage.families):
-- top 3 families with calibrated probabilities, the current family's probability, whether
-- the product looks misfiled, and the evidence (JSON list of the neighbour images that voted).
CREATE TABLE IF NOT EXISTS npimage_family_prediction (
    client_id          text NOT NULL,
    product_id         text NOT NULL,
    family             text,                     -- np_product.family when the run read it
    predicted_family   text,
    confidence         real,
    family_2           text,
    confidence_2       real,
    family_3           text,
    confidence_3       real,
    current_confidence real,                     -- probability of the current family
    misfiled           boolean NOT NULL DEFAULT false,
    n_images           integer,
    n_votes            integer,
    evidence           jsonb,
    predicted_run_id   text,                     -- run that computed the prediction
    run_id             text,                     -- run that loaded it
    PRIMARY KEY (client_id, product_id)
);
CREATE INDEX IF NOT EXISTS npimage_family_prediction_misfiled
    ON npimage_family_prediction (client_id, confidence DESC) WHERE misfiled;
