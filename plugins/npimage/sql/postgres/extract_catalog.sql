-- Catalogue rows of one client in the order of the npimage catalog contract:
-- client_id, image_id, product_id, reference (the GTIN), uri, size_bytes, modified_at.
-- size_bytes is unknown to the database (NULL); modified_at comes as epoch microseconds (UTC).
-- Optional filters, NULL to disable: %(since)s keeps rows updated after it,
-- %(image_ids)s keeps the listed ids. COPY streams the rows as CSV.
COPY (
    SELECT i.client_id,
           i.image_id,
           r.product_id,
           r.gtin AS reference,
           i.uri,
           NULL::bigint AS size_bytes,
           (extract(epoch FROM i.updated_at) * 1000000)::bigint AS modified_at_us
    FROM np_image AS i
    LEFT JOIN np_reference AS r
           ON r.client_id = i.client_id AND r.reference_id = i.reference_id
    WHERE i.client_id = %(client_id)s
      AND (%(since)s::timestamptz IS NULL OR i.updated_at > %(since)s::timestamptz)
      AND (%(image_ids)s::text[] IS NULL OR i.image_id = ANY (%(image_ids)s::text[]))
    ORDER BY i.image_id
) TO STDOUT WITH (FORMAT csv)
