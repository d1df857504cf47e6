-- Report: which readers ran on the images of one page set, and the size they read.
SELECT image_id, reader, width, height
FROM image_reads
WHERE client_id = $client AND image_id BETWEEN $first AND $last;
