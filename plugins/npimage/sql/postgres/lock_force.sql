-- Operator's clean-up: clear a lock whoever holds it; returns the holder cleared.
DELETE FROM npimage_lock
WHERE lock_key = %(lock_key)s
RETURNING run_id, owner, pid, host, since, dag_id;
