-- Every current image id of a client with its product and reference: the deletions are the
-- previous catalogue's ids missing here, and a reference moved to another product shows up
-- even when np_image.updated_at did not move. No uri: this list is kept small.
COPY (
    SELECT i.image_id,
           r.product_id,
           r.gtin AS reference
    FROM np_image AS i
    LEFT JOIN np_reference AS r
           ON r.client_id = i.client_id AND r.reference_id = i.reference_id
    WHERE i.client_id = %(client_id)s
    ORDER BY i.image_id
) TO STDOUT WITH (FORMAT csv)
