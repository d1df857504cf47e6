-- Bulk path of a load: CSV rows of the image_codes contract into the staging table.
COPY npimage_stage_image_code (client_id, image_id, sha256, seq, symbology, text, gtin, gs1,
                               x0, y0, x1, y1, note)
FROM STDIN WITH (FORMAT csv)
