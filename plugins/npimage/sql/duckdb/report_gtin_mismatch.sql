-- Report: catalogue errors (image GTIN is not the reference's) of one page set.
SELECT image_id, reference_gtin, image_gtins
FROM catalogue_gtin_mismatch
WHERE client_id = $client AND image_id BETWEEN $first AND $last;
