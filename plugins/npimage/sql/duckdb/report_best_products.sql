-- Report: per product, its best matching product (score, band) and how many it matches.
-- Parameters: $client.
SELECT product_id,
       max(score) AS best_score,
       arg_max(band, score) AS best_band,
       count(*) AS n_matches
FROM product_matches
WHERE client_id = $client
GROUP BY product_id;
