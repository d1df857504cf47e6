-- Report: codes read on the images of one page set. Parameters: $client, $first, $last.
SELECT image_id, symbology, text, gtin, note, x0, y0, x1, y1
FROM image_codes
WHERE client_id = $client AND image_id BETWEEN $first AND $last
ORDER BY image_id, seq;
