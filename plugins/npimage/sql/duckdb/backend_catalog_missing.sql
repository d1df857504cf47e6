-- Incremental extract from PostgreSQL (npimage.backend.extract): current ids (keys) that
-- neither the rows re-read from PostgreSQL (fresh) nor the previous catalogue hold. They are
-- read from PostgreSQL too: the previous catalogue was older than the watermark, or a row
-- was committed late with an updated_at below it.
SELECT k.image_id
FROM keys AS k
WHERE NOT EXISTS (SELECT 1 FROM fresh AS f WHERE f.image_id = k.image_id)
  AND NOT EXISTS (SELECT 1 FROM prev_catalog AS p
                  WHERE p.client_id = $client_id AND p.image_id = k.image_id)
ORDER BY k.image_id;
