-- One npimage_run row, all columns.
SELECT * FROM npimage_run WHERE client_id = %(client_id)s AND run_id = %(run_id)s;
