-- Extract from PostgreSQL (npimage.backend.extract): how a new catalogue differs from the
-- previous one of the same client. Changed = new ids, or any catalogue field that moved.
WITH prev AS (SELECT * FROM prev_catalog WHERE client_id = $client_id)
SELECT
    (SELECT count(*) FROM new_catalog) AS n_images,
    (SELECT count(*)
     FROM new_catalog AS n
     LEFT JOIN prev AS p ON p.image_id = n.image_id
     WHERE p.image_id IS NULL
        OR n.product_id IS DISTINCT FROM p.product_id
        OR n.reference IS DISTINCT FROM p.reference
        OR n.uri IS DISTINCT FROM p.uri
        OR n.size_bytes IS DISTINCT FROM p.size_bytes
        OR n.modified_at IS DISTINCT FROM p.modified_at) AS n_changed,
    (SELECT count(*)
     FROM prev AS p
     WHERE NOT EXISTS (SELECT 1 FROM new_catalog AS n WHERE n.image_id = p.image_id))
        AS n_deleted;
