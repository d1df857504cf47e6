-- Report: the nearest images of one page set (a range of image ids), best rank first.
-- Parameters: $client, $first, $last (inclusive bounds of the range).
SELECT image_id, match_image_id, rank, score, band, dah, ddh, dph, dfv, same_bytes,
       score_before, verified, verify_reason
FROM image_matches
WHERE client_id = $client AND image_id BETWEEN $first AND $last
ORDER BY image_id, rank, match_image_id;
