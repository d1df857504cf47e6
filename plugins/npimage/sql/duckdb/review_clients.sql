-- Clients of the warehouse for the review application's first page: the latest run of
-- each, its images, its image pairs in the group bands, its product pairs (each once).
-- Parameter: $bands = the bands whose pairs form groups (npimage.review.data.GROUP_BANDS).
SELECT r.client_id, r.run_id, r.published_at,
       (SELECT count(*) FROM images AS i WHERE i.client_id = r.client_id) AS images,
       (SELECT count(*) FROM image_matches AS m
         WHERE m.client_id = r.client_id AND m.image_id < m.match_image_id
           AND list_contains($bands, m.band)) AS group_pairs,
       (SELECT count(*) FROM product_matches AS p
         WHERE p.client_id = r.client_id AND p.product_id < p.match_product_id) AS product_pairs
FROM runs AS r
WHERE r.published_at = (SELECT max(published_at) FROM runs AS q WHERE q.client_id = r.client_id)
ORDER BY r.client_id
