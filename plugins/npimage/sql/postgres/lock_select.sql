-- The holder of a lock, locked for the read-decide-write of an acquire (FOR UPDATE), and
-- whether its lease ran out.
SELECT run_id, owner, pid, host, since, dag_id,
       expires_at IS NOT NULL AND expires_at < now() AS expired
FROM npimage_lock
WHERE lock_key = %(lock_key)s
FOR UPDATE;
