-- npimage evaluate --families: a client's published family predictions against the
-- families the catalogue gives (each prediction ignores the product's own images).
SELECT count(*) FILTER (WHERE family IS NOT NULL AND predicted_family IS NOT NULL),
       avg(CASE WHEN predicted_family = family THEN 1.0 ELSE 0.0 END)
           FILTER (WHERE family IS NOT NULL AND predicted_family IS NOT NULL),
       avg(CASE WHEN family IN (predicted_family, family_2, family_3) THEN 1.0 ELSE 0.0 END)
           FILTER (WHERE family IS NOT NULL AND predicted_family IS NOT NULL),
       count(*) FILTER (WHERE misfiled),
       count(*) FILTER (WHERE family IS NULL AND predicted_family IS NOT NULL)
FROM product_family_predictions
WHERE client_id = $client;
