-- Serialise loads of the same client until the end of the transaction; other clients'
-- loads take other keys and go on in parallel (a hash collision only makes them wait).
-- The second DELETE of two concurrent loads then sees the first load's rows and removes them.
SELECT pg_advisory_xact_lock(%(lock_class)s, hashtext(%(client_id)s));
