-- Names of one client's products (np_product.name), for the review application.
SELECT product_id, name
FROM np_product
WHERE client_id = %(client_id)s AND name IS NOT NULL AND name <> ''
ORDER BY product_id
