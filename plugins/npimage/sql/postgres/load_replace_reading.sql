-- Pack reading: swap one client's codes and text for the staged ones, inside the load's
-- transaction (after load_replace.sql).
DELETE FROM npimage_image_code WHERE client_id = %(client_id)s;
INSERT INTO npimage_image_code SELECT * FROM npimage_stage_image_code;

DELETE FROM npimage_image_text WHERE client_id = %(client_id)s;
INSERT INTO npimage_image_text SELECT * FROM npimage_stage_image_text;
