-- Incremental extract from PostgreSQL (npimage.backend.extract): one catalogue row per
-- current id (keys); ids gone from np_image are not in keys and drop out. Product and
-- reference come from keys (a reference moved to another product moves its images);
-- uri, size and modified_at from the row re-read from PostgreSQL (fresh) when there is
-- one, else from the previous catalogue.
WITH prev AS (SELECT * FROM prev_catalog WHERE client_id = $client_id)
SELECT $client_id AS client_id,
       k.image_id,
       k.product_id,
       k.reference,
       CASE WHEN f.image_id IS NULL THEN p.uri ELSE f.uri END AS uri,
       CASE WHEN f.image_id IS NULL THEN p.size_bytes ELSE f.size_bytes END AS size_bytes,
       CASE WHEN f.image_id IS NULL THEN p.modified_at ELSE f.modified_at END AS modified_at
FROM keys AS k
LEFT JOIN fresh AS f ON f.image_id = k.image_id
LEFT JOIN prev AS p ON p.image_id = k.image_id
ORDER BY k.image_id;
