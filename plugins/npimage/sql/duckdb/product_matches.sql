-- Roll image matches up to products: two products match when at least one image of one
-- matches an image of the other (the POC's rule). Images of the same product are not a
-- product match. Score = best image pair; n_image_pairs = image pairs behind the match.
-- Relations: image_matches (this run, merged), catalog(image_id, product_id),
-- rejected_pairs(item_id, match_id, band) of product pairs rejected by a reviewer, bands.
-- rejected = a reviewer said "not the same" for the product pair in a band at or below its
-- band now, or every image pair behind it is rejected: kept, flagged, not proposed.
-- Parameters: $client_id, $run_id, $same, $retouched, $very_similar.
WITH pairs AS (
    SELECT a.product_id, b.product_id AS match_product_id, m.score, m.image_id, m.match_image_id,
           m.rejected
    FROM image_matches AS m
    JOIN catalog AS a ON a.image_id = m.image_id
    JOIN catalog AS b ON b.image_id = m.match_image_id
    WHERE a.product_id <> b.product_id
),
rolled AS (
SELECT
    $client_id AS client_id,
    product_id,
    match_product_id,
    CAST(max(score) AS FLOAT) AS score,
    CASE
        WHEN max(score) >= $same THEN 'same'
        WHEN max(score) >= $retouched THEN 'retouched'
        WHEN max(score) >= $very_similar THEN 'very_similar'
        ELSE 'similar'
    END AS band,
    CAST(count(*) AS INTEGER) AS n_image_pairs,
    first(image_id ORDER BY score DESC, image_id, match_image_id) AS best_image_id,
    first(match_image_id ORDER BY score DESC, image_id, match_image_id) AS best_match_image_id,
    $run_id AS run_id,
    bool_and(coalesce(rejected, false)) AS images_rejected
FROM pairs
GROUP BY product_id, match_product_id
)
SELECT p.* EXCLUDE (images_rejected),
       p.images_rejected OR coalesce(now_band.rank <= at_band.rank, false) AS rejected
FROM rolled AS p
LEFT JOIN rejected_pairs AS r
       ON r.item_id = least(p.product_id, p.match_product_id)
      AND r.match_id = greatest(p.product_id, p.match_product_id)
LEFT JOIN bands AS now_band ON now_band.band = p.band
LEFT JOIN bands AS at_band ON at_band.band = r.band
ORDER BY p.product_id, p.score DESC, p.match_product_id
