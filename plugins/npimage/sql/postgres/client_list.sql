-- Clients to process; %(active_only)s false lists inactive ones too.
SELECT client_id
FROM np_client
WHERE active OR NOT %(active_only)s
ORDER BY client_id;
