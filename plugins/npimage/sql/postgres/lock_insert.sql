-- Take a free lock: one row per lock key; returns the row when this call created it.
INSERT INTO npimage_lock (lock_key, run_id, owner, pid, host, since, dag_id, expires_at)
VALUES (%(lock_key)s, %(run_id)s, %(owner)s, %(pid)s, %(host)s, %(since)s, %(dag_id)s,
        CASE WHEN %(ttl)s IS NULL THEN NULL
             ELSE now() + make_interval(secs => %(ttl)s) END)
ON CONFLICT (lock_key) DO NOTHING
RETURNING run_id;
