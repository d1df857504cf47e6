-- Keep npimage_band in step with npimage.bands.bands_table() (one row per call).
INSERT INTO npimage_band (band, lower_bound, rank)
VALUES (%(band)s, %(lower_bound)s, %(rank)s)
ON CONFLICT (band) DO UPDATE
SET lower_bound = EXCLUDED.lower_bound, rank = EXCLUDED.rank;
