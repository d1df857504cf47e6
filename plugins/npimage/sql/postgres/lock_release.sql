-- Release a lock if `run_id` holds it (a refused run never frees the lock of another run).
DELETE FROM npimage_lock
WHERE lock_key = %(lock_key)s AND run_id = %(run_id)s
RETURNING run_id;
