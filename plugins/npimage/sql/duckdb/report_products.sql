-- Report: every product of a client with its image count and distinct references.
-- Parameters: $client.
SELECT product_id,
       count(*) AS n_images,
       list(DISTINCT reference ORDER BY reference) FILTER (WHERE reference IS NOT NULL)
           AS refs
FROM images
WHERE client_id = $client
GROUP BY product_id
ORDER BY product_id;
