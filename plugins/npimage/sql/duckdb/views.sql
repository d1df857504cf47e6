-- Views for analysts. Re-created on every publish (CREATE OR REPLACE).

-- Groups of duplicate images: connected components of the pairs in band `same`
-- (copies, recompressions, resizes). group_id = the smallest image_id of the group.
CREATE OR REPLACE VIEW duplicate_groups AS
WITH RECURSIVE edges AS (
    SELECT client_id, image_id AS a, match_image_id AS b
    FROM image_matches WHERE band = 'same' AND NOT coalesce(rejected, false)
),
reach(client_id, a, b) AS (
    SELECT DISTINCT client_id, a, a FROM edges
    UNION
    SELECT r.client_id, r.a, e.b
    FROM reach AS r JOIN edges AS e ON e.client_id = r.client_id AND e.a = r.b
),
grouped AS (
    SELECT client_id, a AS image_id, min(b) AS group_id FROM reach GROUP BY client_id, a
)
SELECT g.client_id, g.group_id, g.image_id, i.product_id, i.uri,
       count(*) OVER (PARTITION BY g.client_id, g.group_id) AS group_size
FROM grouped AS g
LEFT JOIN images AS i ON i.client_id = g.client_id AND i.image_id = g.image_id
ORDER BY g.client_id, g.group_id, g.image_id;

-- Product pairs worth a merge review, each pair once (product_id < match_product_id);
-- pairs a reviewer rejected as "not the same" (column rejected) are not proposed.
CREATE OR REPLACE VIEW product_merge_candidates AS
SELECT client_id, product_id, match_product_id, score, band, n_image_pairs,
       best_image_id, best_match_image_id
FROM product_matches
WHERE product_id < match_product_id AND NOT coalesce(rejected, false)
ORDER BY client_id, score DESC, product_id;

-- One row per client: sizes of the latest run's tables and its matches per band
-- (pairs_by_band: a MAP band -> pairs, each pair counted once, for whatever bands the
-- run stored: the band names are npimage.bands', not repeated here).
CREATE OR REPLACE VIEW client_summary AS
SELECT r.client_id, r.run_id, r.mode, r.fv_model, r.published_at,
       (SELECT count(*) FROM images AS i WHERE i.client_id = r.client_id) AS images,
       (SELECT count(*) FROM rejects AS x WHERE x.client_id = r.client_id) AS rejects,
       (SELECT count(*) FROM image_matches AS m
         WHERE m.client_id = r.client_id AND m.image_id < m.match_image_id) AS image_pairs,
       (SELECT map(list(band ORDER BY band), list(n ORDER BY band))
          FROM (SELECT m.band, count(*) AS n FROM image_matches AS m
                 WHERE m.client_id = r.client_id AND m.image_id < m.match_image_id
                 GROUP BY m.band)) AS pairs_by_band,
       (SELECT count(*) FROM product_matches AS p
         WHERE p.client_id = r.client_id AND p.product_id < p.match_product_id) AS product_pairs
FROM runs AS r
WHERE r.published_at = (SELECT max(published_at) FROM runs AS q WHERE q.client_id = r.client_id);
