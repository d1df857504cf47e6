-- The family of every product of a client (np_product.family; NULL = none), for the
-- family stage (npimage.families). Small: one row per product. COPY streams it as CSV.
COPY (
    SELECT client_id, product_id, family
    FROM np_product
    WHERE client_id = %(client_id)s
    ORDER BY product_id
) TO STDOUT WITH (FORMAT csv)
