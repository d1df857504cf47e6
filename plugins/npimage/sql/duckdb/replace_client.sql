-- Replace one client's rows with those of a finished run. Runs inside one transaction
-- (npimage.warehouse): readers see the old run or the new one, never a mix, and other
-- clients' rows are untouched. Parameters: $client_id, $run_id and one Parquet path each.
DELETE FROM images WHERE client_id = $client_id;
INSERT INTO images
SELECT client_id, image_id, product_id, reference, uri, size_bytes, modified_at, $run_id
FROM read_parquet($catalog);

DELETE FROM signatures WHERE client_id = $client_id;
INSERT INTO signatures BY NAME SELECT * FROM read_parquet($signatures);

DELETE FROM rejects WHERE client_id = $client_id;
INSERT INTO rejects BY NAME SELECT * FROM read_parquet($rejects);

DELETE FROM image_matches WHERE client_id = $client_id;
INSERT INTO image_matches BY NAME SELECT * FROM read_parquet($image_matches);

DELETE FROM product_matches WHERE client_id = $client_id;
INSERT INTO product_matches BY NAME SELECT * FROM read_parquet($product_matches);
