-- One reviewer decision into npimage_decision; a decision already there (same id) is kept.
INSERT INTO npimage_decision
    (decision_id, client_id, kind, item_id, match_id, decision, keep_id, band, score,
     dah, ddh, dph, dfv, run_id, decided_by, decided_at, origin, note)
VALUES (%(decision_id)s, %(client_id)s, %(kind)s, %(item_id)s, %(match_id)s, %(decision)s,
        %(keep_id)s, %(band)s, %(score)s, %(dah)s, %(ddh)s, %(dph)s, %(dfv)s, %(run_id)s,
        %(decided_by)s, %(decided_at)s, %(origin)s, %(note)s)
ON CONFLICT (decision_id) DO NOTHING
