-- Swap one client's matches for the staged ones. Runs inside the load's transaction:
-- readers see the old rows until it commits, then the new ones; other clients are untouched.
DELETE FROM npimage_image_match WHERE client_id = %(client_id)s;

INSERT INTO npimage_image_match
    (client_id, image_id, match_image_id, rank, score, band,
     dah, ddh, dph, dfv, same_bytes, run_id, score_before, verified, verify_reason, rejected)
SELECT client_id, image_id, match_image_id, rank, score, band,
       dah, ddh, dph, dfv, same_bytes, run_id, score_before, verified, verify_reason, rejected
FROM npimage_stage_image_match;

DELETE FROM npimage_product_match WHERE client_id = %(client_id)s;

INSERT INTO npimage_product_match
    (client_id, product_id, match_product_id, score, band,
     n_image_pairs, best_image_id, best_match_image_id, run_id, score_before, verify_reason, rejected)
SELECT client_id, product_id, match_product_id, score, band,
       n_image_pairs, best_image_id, best_match_image_id, run_id, score_before, verify_reason, rejected
FROM npimage_stage_product_match;
