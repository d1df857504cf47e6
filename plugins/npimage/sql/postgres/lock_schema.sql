-- Run locks shared by every host (npimage.storage.locks, NPIMAGE_STATE_DSN): one row per held
-- lock. A process holder keeps a lease (expires_at) that its heartbeat renews; an Airflow
-- holder has none (its tasks run on any worker) and is asked of Airflow whether it is alive.
SELECT pg_advisory_xact_lock(hashtext('npimage_lock_schema'));
CREATE TABLE IF NOT EXISTS npimage_lock (
    lock_key   text PRIMARY KEY,            -- <data dir>#client:<client id>
    run_id     text NOT NULL,
    owner      text NOT NULL CHECK (owner IN ('process', 'airflow')),
    pid        integer,
    host       text,
    since      text NOT NULL,               -- ISO 8601, UTC
    dag_id     text,
    expires_at timestamptz                  -- lease of a process holder; NULL for airflow
);
