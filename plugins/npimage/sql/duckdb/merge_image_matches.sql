-- Merge the compare shards of a run into the client's image_matches.
-- Relations registered by npimage.merge:
--   new_pairs(image_id, match_image_id, score, dah, ddh, dph, dfv, same_bytes,
--             score_before, verified, verify_reason)
--       top-k of each query image of this run, one row per (query, match), from all shards,
--       with the verify stage's result applied (score = verified score);
--   prior_matches(same columns)
--       image_matches of the last published run (empty in full mode);
--   queries(image_id)   images compared this run (their old rows are replaced);
--   present(image_id)   images with a signature in this run (rows of others are dropped);
--   bands(band, lower)  the labels and float32 lower limits (npimage.bands.bands_table).
--   rejected_pairs(item_id, match_id, band)   pairs (item_id < match_id) whose reviewer
--       decision in force is "not the same", and the band they were rejected in.
-- rejected = the pair scores at or above the lower limit of the band a reviewer rejected
-- it in: the row stays (nothing is hidden) but is no longer proposed. A pair that fell
-- below that band is proposed again, in its lower band.
-- Parameters: $client_id, $run_id, $top_k, $threshold (a float32 value: npimage.bands).
-- Result: both directions of each pair; per image its top-k plus any image that has it in
-- its own top-k (so a pair never shows in one direction only); rank 1 = best.
WITH fresh AS (
    SELECT image_id, match_image_id, score, dah, ddh, dph, dfv, same_bytes,
           score_before, verified, verify_reason FROM new_pairs
    UNION ALL
    SELECT match_image_id, image_id, score, dah, ddh, dph, dfv, same_bytes,
           score_before, verified, verify_reason FROM new_pairs
),
kept AS (
    SELECT p.image_id, p.match_image_id, p.score, p.dah, p.ddh, p.dph, p.dfv, p.same_bytes,
           p.score_before, p.verified, p.verify_reason
    FROM prior_matches AS p
    WHERE p.image_id NOT IN (SELECT image_id FROM queries)
      AND p.match_image_id NOT IN (SELECT image_id FROM queries)
      AND p.image_id IN (SELECT image_id FROM present)
      AND p.match_image_id IN (SELECT image_id FROM present)
),
pairs AS (
    SELECT * FROM fresh
    UNION ALL
    SELECT * FROM kept
),
unique_pairs AS (
    SELECT * FROM pairs
    QUALIFY row_number() OVER (PARTITION BY image_id, match_image_id ORDER BY score DESC) = 1
),
best AS (
    SELECT * FROM unique_pairs
    QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY score DESC, match_image_id) <= $top_k
),
closed AS (
    SELECT * FROM (
        SELECT * FROM best
        UNION ALL
        SELECT match_image_id, image_id, score, dah, ddh, dph, dfv, same_bytes,
               score_before, verified, verify_reason FROM best
    )
    QUALIFY row_number() OVER (PARTITION BY image_id, match_image_id ORDER BY score DESC) = 1
),
kept_pairs AS (
    SELECT * REPLACE (CAST(score AS FLOAT) AS score) FROM closed
    WHERE CAST(score AS FLOAT) >= CAST($threshold AS FLOAT)
)
SELECT
    $client_id AS client_id,
    k.image_id,
    k.match_image_id,
    CAST(row_number() OVER (PARTITION BY k.image_id ORDER BY k.score DESC, k.match_image_id)
         AS INTEGER) AS rank,
    k.score,
    b.band,
    CAST(k.dah AS FLOAT) AS dah,
    CAST(k.ddh AS FLOAT) AS ddh,
    CAST(k.dph AS FLOAT) AS dph,
    CAST(k.dfv AS FLOAT) AS dfv,
    k.same_bytes,
    $run_id AS run_id,
    CAST(k.score_before AS FLOAT) AS score_before,
    coalesce(k.verified, false) AS verified,
    k.verify_reason,
    coalesce(k.score >= at_band.lower, false) AS rejected
FROM kept_pairs AS k
ASOF LEFT JOIN bands AS b ON k.score >= b.lower
LEFT JOIN rejected_pairs AS r
       ON r.item_id = least(k.image_id, k.match_image_id)
      AND r.match_id = greatest(k.image_id, k.match_image_id)
LEFT JOIN bands AS at_band ON at_band.band = r.band
ORDER BY k.image_id, rank
