-- Record a published run (idempotent: a retried publish replaces its own row).
DELETE FROM runs WHERE client_id = $client_id AND run_id = $run_id;
INSERT INTO runs VALUES (
    $client_id, $run_id, $mode, $fv_model, $top_k, $threshold, $weights, $n_images, $n_rejects,
    $n_computed, $n_image_matches, $n_product_matches, $started_at, now()
);
