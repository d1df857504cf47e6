-- Session-private staging tables of one load, dropped when its transaction ends
-- (commit or rollback). Temporary tables are not WAL-logged, so COPY into them is cheap.
CREATE TEMPORARY TABLE npimage_stage_image_match
    (LIKE npimage_image_match INCLUDING DEFAULTS) ON COMMIT DROP;
CREATE TEMPORARY TABLE npimage_stage_product_match
    (LIKE npimage_product_match INCLUDING DEFAULTS) ON COMMIT DROP;
