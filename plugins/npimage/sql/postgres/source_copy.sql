COPY np_stage_catalog (client_id, image_id, product_id, reference, uri, modified_at)
FROM STDIN WITH (FORMAT csv)
