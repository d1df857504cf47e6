-- Staging table for seeding the NextPage source tables from a catalog Parquet (tests, demo).
CREATE TEMPORARY TABLE np_stage_catalog (
    client_id   text,
    image_id    text,
    product_id  text,
    reference   text,
    uri         text,
    modified_at timestamptz
) ON COMMIT DROP;
