-- Report: every image of a client, in the order the index lists them.
-- Parameters: $client.
SELECT image_id, product_id, reference, uri, size_bytes, modified_at, run_id
FROM images
WHERE client_id = $client
ORDER BY image_id;
