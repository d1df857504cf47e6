-- Report: images that could not be read or decoded, with the stage and the reason.
-- Parameters: $client.
SELECT image_id, uri, stage, reason
FROM rejects
WHERE client_id = $client
ORDER BY image_id, stage;
