-- Whether np_product has a `family` column (a NextPage database without one has no
-- families: the family stage then does nothing, and the run goes on).
SELECT count(*)
FROM information_schema.columns
WHERE table_name = 'np_product' AND column_name = 'family'
  AND table_schema = ANY (current_schemas(false));
