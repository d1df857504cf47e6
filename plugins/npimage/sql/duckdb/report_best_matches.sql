-- Report: per image, its best match (score, band) and how many matches it has.
-- Feeds the index cards and the band filter. Parameters: $client.
SELECT image_id,
       max(score) AS best_score,
       arg_max(band, score) AS best_band,
       count(*) AS n_matches
FROM image_matches
WHERE client_id = $client
GROUP BY image_id;
