-- Pack reading: session-private staging tables of one load, dropped at its end.
CREATE TEMPORARY TABLE npimage_stage_image_code
    (LIKE npimage_image_code INCLUDING DEFAULTS) ON COMMIT DROP;
CREATE TEMPORARY TABLE npimage_stage_image_text
    (LIKE npimage_image_text INCLUDING DEFAULTS) ON COMMIT DROP;
