-- Report: products whose family disagrees with the prediction at high confidence.
SELECT product_id, family, predicted_family, confidence, family_2, confidence_2,
       family_3, confidence_3, current_confidence, misfiled, n_votes, evidence
FROM product_family_predictions
WHERE client_id = $client AND misfiled
ORDER BY confidence DESC, product_id;
