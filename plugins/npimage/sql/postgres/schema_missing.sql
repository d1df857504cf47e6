-- Tables and indexes of schema.sql that do not exist yet. apply_schema runs schema.sql only
-- when this lists something: CREATE INDEX IF NOT EXISTS locks its table even when the index
-- exists, and would wait for (or deadlock with) a running load. Keep in step with schema.sql.
SELECT name
FROM unnest(ARRAY['npimage_run', 'npimage_run_last_success', 'npimage_image_match',
                  'npimage_product_match', 'npimage_product_match_score',
                  'npimage_band', 'npimage_family_prediction',
                  'npimage_family_prediction_misfiled']) AS name
WHERE to_regclass(name) IS NULL;
