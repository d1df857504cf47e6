-- Newest np_image.updated_at of a client: the watermark the next incremental run starts from.
SELECT max(updated_at) FROM np_image WHERE client_id = %(client_id)s;
