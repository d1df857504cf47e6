-- Version 3: families (#18). Each product's predicted family, top 3 with calibrated
-- probabilities, the current family's probability, the misfiled flag and the evidence.
CREATE TABLE IF NOT EXISTS product_family_predictions (
    client_id VARCHAR NOT NULL,
    product_id VARCHAR NOT NULL,
    family VARCHAR,
    predicted_family VARCHAR,
    confidence FLOAT,
    family_2 VARCHAR,
    confidence_2 FLOAT,
    family_3 VARCHAR,
    confidence_3 FLOAT,
    current_confidence FLOAT,
    misfiled BOOLEAN,
    n_images INTEGER,
    n_votes INTEGER,
    evidence VARCHAR,
    predicted_run_id VARCHAR,
    run_id VARCHAR NOT NULL
);
