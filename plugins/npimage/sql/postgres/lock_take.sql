-- Replace the holder of a lock (same run again, or a dead holder taken over).
UPDATE npimage_lock
SET run_id = %(run_id)s, owner = %(owner)s, pid = %(pid)s, host = %(host)s, since = %(since)s,
    dag_id = %(dag_id)s,
    expires_at = CASE WHEN %(ttl)s IS NULL THEN NULL
                      ELSE now() + make_interval(secs => %(ttl)s) END
WHERE lock_key = %(lock_key)s;
