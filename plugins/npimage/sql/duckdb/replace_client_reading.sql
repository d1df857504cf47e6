-- Pack reading: replace one client's codes, text and read records with the run's files.
-- Runs in the publish transaction, right after replace_client.sql.
DELETE FROM image_codes WHERE client_id = $client_id;
INSERT INTO image_codes BY NAME SELECT * FROM read_parquet($image_codes);

DELETE FROM image_text WHERE client_id = $client_id;
INSERT INTO image_text BY NAME SELECT * FROM read_parquet($image_text);

DELETE FROM image_reads WHERE client_id = $client_id;
INSERT INTO image_reads BY NAME SELECT * FROM read_parquet($image_reads);
