-- Mark the client's other 'running' runs 'failed': called when a new run of the client has
-- taken the client's run lock, so no other run of it can still be in flight (one killed
-- with SIGKILL, or whose host died, could not record its end).
UPDATE npimage_run
SET status = 'failed', finished_at = clock_timestamp(),
    error = 'abandoned: the run stopped without recording its end (killed?); run '
            || %(run_id)s || ' started after it'
WHERE client_id = %(client_id)s AND status = 'running' AND run_id <> %(run_id)s;
