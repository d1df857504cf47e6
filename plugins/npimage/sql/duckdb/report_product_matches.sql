-- Report: the matching products of one page set (a range of product ids), best first.
-- Parameters: $client, $first, $last (inclusive bounds of the range).
SELECT product_id, match_product_id, score, band, n_image_pairs,
       best_image_id, best_match_image_id, score_before, verify_reason
FROM product_matches
WHERE client_id = $client AND product_id BETWEEN $first AND $last
ORDER BY product_id, score DESC, match_product_id;
