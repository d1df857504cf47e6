-- Heartbeat of a process holder: extend its lease; no row = the lock is no longer its own.
UPDATE npimage_lock
SET expires_at = now() + make_interval(secs => %(ttl)s)
WHERE lock_key = %(lock_key)s AND run_id = %(run_id)s AND pid = %(pid)s AND host = %(host)s
RETURNING run_id;
