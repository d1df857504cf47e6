-- Report: family suggestions of a range of products (one page set).
SELECT product_id, family, predicted_family, confidence, family_2, confidence_2,
       family_3, confidence_3, current_confidence, misfiled, n_votes, evidence
FROM product_family_predictions
WHERE client_id = $client AND product_id BETWEEN $first AND $last
ORDER BY product_id;
