-- Version 6: verification of close pairs (issue #12, npimage.matching.verify), additive.
-- The local-detail signature of every image, and per match the score before verification,
-- whether the pair was checked and why it moved. Files published before read NULL.
ALTER TABLE signatures ADD COLUMN detail BLOB;
ALTER TABLE image_matches ADD COLUMN score_before FLOAT;
ALTER TABLE image_matches ADD COLUMN verified BOOLEAN;
ALTER TABLE image_matches ADD COLUMN verify_reason VARCHAR;
ALTER TABLE product_matches ADD COLUMN score_before FLOAT;
ALTER TABLE product_matches ADD COLUMN verify_reason VARCHAR;
