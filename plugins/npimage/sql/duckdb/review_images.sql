-- Images of one client for the review application: ids, product, file and pixel size.
-- Parameter: ? = client_id.
SELECT i.image_id, i.product_id, i.reference, i.uri, s.width, s.height,
       coalesce(s.size_bytes, i.size_bytes) AS size_bytes
FROM images AS i
LEFT JOIN signatures AS s ON s.client_id = i.client_id AND s.image_id = i.image_id
WHERE i.client_id = ?
