-- Bulk path of a load: CSV rows of the image_matches contract into the staging table.
COPY npimage_stage_image_match (client_id, image_id, match_image_id, rank, score, band,
                                dah, ddh, dph, dfv, same_bytes, run_id,
                                score_before, verified, verify_reason, rejected)
FROM STDIN WITH (FORMAT csv)
