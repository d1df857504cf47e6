-- Which of the version table and the run table exist (npimage.backend.schema._version):
-- neither = no schema yet (0); the run table only = the release of commit 3b8234e (1).
SELECT to_regclass('npimage_schema_version') IS NOT NULL AS versioned,
       to_regclass('npimage_run') IS NOT NULL AS created;
