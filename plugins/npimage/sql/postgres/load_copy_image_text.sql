-- Bulk path of a load: CSV rows of the image_text contract into the staging table.
COPY npimage_stage_image_text (client_id, image_id, sha256, line, text, confidence,
                               x0, y0, x1, y1, tokens, quantities, strengths)
FROM STDIN WITH (FORMAT csv)
