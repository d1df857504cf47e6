-- Swap one client's family predictions for the staged ones, in the load's transaction
-- (after load_lock): readers see the old predictions or the new ones, never a mix.
DELETE FROM npimage_family_prediction WHERE client_id = %(client_id)s;

INSERT INTO npimage_family_prediction
SELECT * FROM npimage_stage_family_prediction
WHERE client_id = %(client_id)s;
