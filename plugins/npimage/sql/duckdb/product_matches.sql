-- Roll image matches up to products: two products match when at least one image of one
-- matches an image of the other (the POC's rule). Images of the same product are not a
-- product match. Score = best image pair; n_image_pairs = image pairs behind the match.
-- Relations: image_matches (this run, merged), catalog(image_id, product_id),
--   bands(band, lower): the labels and float32 lower limits (npimage.bands.bands_table).
--   rejected_pairs(item_id, match_id, band): product pairs a reviewer rejected.
-- rejected = a reviewer said "not the same" for the product pair and it scores at or above
-- that band, or every image pair behind it is rejected: kept, flagged, not proposed.
-- Parameters: $client_id, $run_id.
WITH pairs AS (
    SELECT a.product_id, b.product_id AS match_product_id, m.score, m.image_id, m.match_image_id,
           m.score_before, m.verify_reason,
           m.rejected
    FROM image_matches AS m
    JOIN catalog AS a ON a.image_id = m.image_id
    JOIN catalog AS b ON b.image_id = m.match_image_id
    WHERE a.product_id <> b.product_id
),
rolled AS (
    SELECT
        product_id,
        match_product_id,
        CAST(max(score) AS FLOAT) AS score,
        CAST(count(*) AS INTEGER) AS n_image_pairs,
        first(image_id ORDER BY score DESC, image_id, match_image_id) AS best_image_id,
        first(match_image_id ORDER BY score DESC, image_id, match_image_id)
            AS best_match_image_id,
        CAST(first(score_before ORDER BY score DESC, image_id, match_image_id) AS FLOAT)
            AS score_before,
        first(verify_reason ORDER BY score DESC, image_id, match_image_id) AS verify_reason,
        bool_and(coalesce(rejected, false)) AS images_rejected
    FROM pairs
    GROUP BY product_id, match_product_id
)
SELECT
    $client_id AS client_id,
    r.product_id,
    r.match_product_id,
    r.score,
    b.band,
    r.n_image_pairs,
    r.best_image_id,
    r.best_match_image_id,
    $run_id AS run_id,
    r.score_before,
    r.verify_reason,
    r.images_rejected OR coalesce(r.score >= at_band.lower, false) AS rejected
FROM rolled AS r
ASOF LEFT JOIN bands AS b ON r.score >= b.lower
LEFT JOIN rejected_pairs AS x
       ON x.item_id = least(r.product_id, r.match_product_id)
      AND x.match_id = greatest(r.product_id, r.match_product_id)
LEFT JOIN bands AS at_band ON at_band.band = x.band
ORDER BY r.product_id, r.score DESC, r.match_product_id
