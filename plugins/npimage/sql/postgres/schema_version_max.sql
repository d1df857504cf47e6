-- The last schema version applied to the npimage_* tables.
SELECT coalesce(max(version), 1) FROM npimage_schema_version;
