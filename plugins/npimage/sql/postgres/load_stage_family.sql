-- Session-private staging table of a load's family predictions (dropped at its end).
CREATE TEMPORARY TABLE npimage_stage_family_prediction
    (LIKE npimage_family_prediction INCLUDING DEFAULTS) ON COMMIT DROP;
