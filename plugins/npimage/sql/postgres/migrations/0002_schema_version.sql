-- Version 2 of the backend tables: the schema version is recorded. From here on every change
-- to the npimage_* tables is a new file in this folder with the next number, applied in order
-- and in place by npimage.backend.schema.apply_schema (one transaction, under an advisory
-- lock), e.g.  ALTER TABLE npimage_image_match ADD COLUMN IF NOT EXISTS verified boolean;
-- Write statements that keep rows (ADD COLUMN with a default or NULL, CREATE TABLE, ...).
CREATE TABLE IF NOT EXISTS npimage_schema_version (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
