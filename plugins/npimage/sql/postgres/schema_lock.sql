-- Two processes creating or migrating the tables at once would collide: one at a time.
SELECT pg_advisory_xact_lock(hashtext('npimage_schema'));
