-- Replace one client's family predictions with a run's (inside the publish transaction).
DELETE FROM product_family_predictions WHERE client_id = $client_id;
INSERT INTO product_family_predictions BY NAME
SELECT * FROM read_parquet($family_predictions);
