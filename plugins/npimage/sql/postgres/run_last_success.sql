-- The client's last successful run: its watermark is where the next incremental run starts.
SELECT run_id, mode, started_at, finished_at, watermark, n_images
FROM npimage_run
WHERE client_id = %(client_id)s AND status = 'success'
ORDER BY finished_at DESC
LIMIT 1;
