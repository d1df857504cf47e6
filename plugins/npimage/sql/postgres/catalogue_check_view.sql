-- The catalogue check (npimage.reading). Run by apply_schema after the migrations, and again
-- whenever NextPage's tables exist but the view does not yet (schema_missing lists it).
-- Catalogue errors: images whose codes carry GTINs, none of them np_reference.gtin of the
-- image's reference. Created when NextPage's tables exist.
DO $$
BEGIN
    IF to_regclass('np_reference') IS NOT NULL AND to_regclass('np_image') IS NOT NULL THEN
        EXECUTE $v$
        CREATE OR REPLACE VIEW npimage_catalogue_gtin_mismatch AS
        SELECT im.client_id, im.image_id, r.product_id, r.reference_id, r.gtin AS reference_gtin,
               array_agg(DISTINCT c.gtin ORDER BY c.gtin) AS image_gtins
        FROM np_image AS im
        JOIN np_reference AS r
          ON r.client_id = im.client_id AND r.reference_id = im.reference_id
        JOIN npimage_image_code AS c
          ON c.client_id = im.client_id AND c.image_id = im.image_id AND c.gtin IS NOT NULL
        WHERE npimage_gtin14(r.gtin) IS NOT NULL
        GROUP BY im.client_id, im.image_id, r.product_id, r.reference_id, r.gtin
        HAVING NOT npimage_gtin14(r.gtin) = ANY (array_agg(c.gtin))
        $v$;
    END IF;
END
$$;
