-- Version 6: verification of close pairs (issue #12, npimage.matching.verify), additive:
-- the score before verification, whether the pair was checked and why it moved
-- ("one region differs (text)", "mirror image", ...). Rows loaded before read NULL.
ALTER TABLE npimage_image_match ADD COLUMN IF NOT EXISTS score_before real;
ALTER TABLE npimage_image_match ADD COLUMN IF NOT EXISTS verified boolean;
ALTER TABLE npimage_image_match ADD COLUMN IF NOT EXISTS verify_reason text;
ALTER TABLE npimage_product_match ADD COLUMN IF NOT EXISTS score_before real;
ALTER TABLE npimage_product_match ADD COLUMN IF NOT EXISTS verify_reason text;
