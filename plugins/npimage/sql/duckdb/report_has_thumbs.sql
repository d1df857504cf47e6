-- Report: does the warehouse have signatures with stored thumbnails (a warehouse built
-- by hand, e.g. in tests, may have no signatures table)? One row: the count of such columns.
SELECT count(*) FROM information_schema.columns
WHERE table_name = 'signatures' AND column_name = 'thumb';
