-- Report: the thumbnails (JPEG) the signature stage stored for some images of a client.
-- Parameters: $client; `wanted` (image_id), a table the caller registers.
SELECT s.image_id, s.thumb
FROM signatures AS s
JOIN wanted AS w ON w.image_id = s.image_id
WHERE s.client_id = $client AND s.thumb IS NOT NULL;
