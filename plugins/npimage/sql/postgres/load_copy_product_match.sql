-- Bulk path of a load: CSV rows of the product_matches contract into the staging table.
COPY npimage_stage_product_match (client_id, product_id, match_product_id, score, band,
                                  n_image_pairs, best_image_id, best_match_image_id, run_id,
                                  score_before, verify_reason, rejected)
FROM STDIN WITH (FORMAT csv)
