-- Record a schema version of the npimage_* tables as applied (idempotent).
INSERT INTO npimage_schema_version (version) VALUES (%(version)s)
ON CONFLICT (version) DO NOTHING;
