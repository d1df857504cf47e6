-- Upsert staged catalogue rows into np_client, np_product, np_reference and np_image.
-- One reference per (product, GTIN) pair; its id is that pair as a JSON array, so that no
-- two pairs share an id whatever characters the ids hold. updated_at takes the catalogue's
-- modified_at, else now(). Rows already in the tables and absent here are left alone.
INSERT INTO np_client (client_id, name)
SELECT DISTINCT client_id, client_id FROM np_stage_catalog
ON CONFLICT (client_id) DO NOTHING;

INSERT INTO np_product (client_id, product_id)
SELECT DISTINCT client_id, product_id FROM np_stage_catalog
ON CONFLICT (client_id, product_id) DO NOTHING;

INSERT INTO np_reference (client_id, reference_id, product_id, gtin)
SELECT DISTINCT client_id, json_build_array(product_id, reference)::text, product_id, reference
FROM np_stage_catalog
ON CONFLICT (client_id, reference_id) DO NOTHING;

INSERT INTO np_image (client_id, image_id, reference_id, uri, updated_at)
SELECT client_id, image_id, json_build_array(product_id, reference)::text, uri,
       coalesce(modified_at, now())
FROM np_stage_catalog
ON CONFLICT (client_id, image_id) DO UPDATE SET
    reference_id = EXCLUDED.reference_id,
    uri          = EXCLUDED.uri,
    updated_at   = EXCLUDED.updated_at;
