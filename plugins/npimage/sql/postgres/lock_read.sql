-- The recorded holder of a lock, if any.
SELECT run_id, owner, pid, host, since, dag_id,
       expires_at IS NOT NULL AND expires_at < now() AS expired
FROM npimage_lock
WHERE lock_key = %(lock_key)s;
