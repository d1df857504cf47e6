-- Version 4 of the warehouse: the reviewer flag (npimage.review, docs/REVIEW.md). A pair a
-- reviewer rejected as "not the same" at or above its band stays, with rejected = true.
-- Files published before read with NULL (not rejected). The decisions themselves are the
-- view `decisions` over data/decisions/ (npimage.review.store), not a published table.
ALTER TABLE image_matches ADD COLUMN rejected BOOLEAN;
ALTER TABLE product_matches ADD COLUMN rejected BOOLEAN;
