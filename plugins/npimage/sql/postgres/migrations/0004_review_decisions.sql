-- Version 4 of the backend tables: reviewers' decisions (npimage review, docs/REVIEW.md).
-- Reviewer flag: the pair was rejected as "not the same" at or above its band
-- (npimage_decision); the row stays, it is no longer proposed.
ALTER TABLE npimage_image_match ADD COLUMN IF NOT EXISTS rejected boolean DEFAULT false;
ALTER TABLE npimage_product_match ADD COLUMN IF NOT EXISTS rejected boolean DEFAULT false;

-- Reviewers' decisions (npimage review): append-only, one row per decision; the decision
-- in force for a pair is its latest. kind: image | product pair; item_id < match_id.
CREATE TABLE IF NOT EXISTS npimage_decision (
    decision_id text PRIMARY KEY,
    client_id   text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('image', 'product')),
    item_id     text NOT NULL,
    match_id    text NOT NULL,
    decision    text NOT NULL CHECK (decision IN ('merge', 'not_same', 'keep', 'skip')),
    keep_id     text,                          -- the image to keep (decision 'keep')
    band        text,                          -- the pair's band and score when decided
    score       real,
    dah         real,
    ddh         real,
    dph         real,
    dfv         real,
    run_id      text,                          -- the published run the reviewer looked at
    decided_by  text NOT NULL,
    decided_at  timestamptz NOT NULL,
    origin      text,                          -- airflow | standalone | import
    note        text
);
CREATE INDEX IF NOT EXISTS npimage_decision_pair
    ON npimage_decision (client_id, kind, item_id, match_id, decided_at DESC);
