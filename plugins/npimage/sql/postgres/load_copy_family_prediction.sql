-- Bulk path of a load: CSV rows of the family_predictions contract into the staging table.
COPY npimage_stage_family_prediction
    (client_id, product_id, family, predicted_family, confidence, family_2, confidence_2,
     family_3, confidence_3, current_confidence, misfiled, n_images, n_votes, evidence,
     predicted_run_id, run_id)
FROM STDIN WITH (FORMAT csv)
