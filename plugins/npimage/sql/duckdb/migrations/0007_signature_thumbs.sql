-- Version 7: signature version and thumbnails (issue #15), additive. The version of the
-- hashes and detail a signature was computed with, and the report's thumbnail (JPEG) made
-- by the signature stage. Files published before read NULL.
ALTER TABLE signatures ADD COLUMN sig_version SMALLINT;
ALTER TABLE signatures ADD COLUMN thumb BLOB;
