-- Create or update the npimage_run row of (client, run). A retried run keeps its first
-- started_at; counts left NULL keep their stored value; finished_at is set when the run
-- leaves 'running'; error is kept only for 'failed'.
INSERT INTO npimage_run AS r
    (client_id, run_id, status, mode, started_at, finished_at,
     n_images, n_changed, n_deleted, n_image_matches, n_product_matches,
     model, thresholds, watermark, details, error)
VALUES
    (%(client_id)s, %(run_id)s, %(status)s, %(mode)s,
     coalesce(%(started_at)s::timestamptz, now()),
     CASE WHEN %(status)s = 'running' THEN NULL ELSE clock_timestamp() END,
     %(n_images)s, %(n_changed)s, %(n_deleted)s, %(n_image_matches)s, %(n_product_matches)s,
     %(model)s, %(thresholds)s, %(watermark)s::timestamptz, %(details)s, %(error)s)
ON CONFLICT (client_id, run_id) DO UPDATE SET
    status            = EXCLUDED.status,
    mode              = coalesce(EXCLUDED.mode, r.mode),
    finished_at       = EXCLUDED.finished_at,
    n_images          = coalesce(EXCLUDED.n_images, r.n_images),
    n_changed         = coalesce(EXCLUDED.n_changed, r.n_changed),
    n_deleted         = coalesce(EXCLUDED.n_deleted, r.n_deleted),
    n_image_matches   = coalesce(EXCLUDED.n_image_matches, r.n_image_matches),
    n_product_matches = coalesce(EXCLUDED.n_product_matches, r.n_product_matches),
    model             = coalesce(EXCLUDED.model, r.model),
    thresholds        = coalesce(EXCLUDED.thresholds, r.thresholds),
    watermark         = coalesce(EXCLUDED.watermark, r.watermark),
    details           = coalesce(EXCLUDED.details, r.details),
    error             = EXCLUDED.error;
