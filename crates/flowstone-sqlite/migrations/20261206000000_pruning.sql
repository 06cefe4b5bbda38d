-- Version 3: finished queue rows can be pruned (see the PostgreSQL schema's
-- version 3). SQLite cannot drop a foreign key, so `materializations` and
-- `events` are rebuilt without the one to `steps`. Dropping the old
-- `materializations` would break the lineage edges that reference it, so they
-- wait in a temporary table and come back once the new table has the rows.
CREATE TEMP TABLE lineage_v2 AS SELECT * FROM lineage;
DELETE FROM lineage;

CREATE TABLE materializations_v3 (
    id            INTEGER PRIMARY KEY,
    asset_key     TEXT NOT NULL,
    partition_key TEXT,
    run_id        TEXT NOT NULL REFERENCES runs (id),
    -- The step that produced it; a record, not a reference (steps are pruned).
    step_id       INTEGER NOT NULL,
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER NOT NULL,
    triggered_by  TEXT NOT NULL,
    user_name     TEXT NOT NULL,
    code_version  TEXT NOT NULL,
    data_version  TEXT NOT NULL,
    -- A JSON object.
    metadata      TEXT NOT NULL DEFAULT '{}',
    location      TEXT NOT NULL,
    io_manager    TEXT NOT NULL
);
INSERT INTO materializations_v3 SELECT * FROM materializations;
DROP TABLE materializations;
ALTER TABLE materializations_v3 RENAME TO materializations;
INSERT INTO lineage SELECT * FROM temp.lineage_v2;
DROP TABLE temp.lineage_v2;
CREATE INDEX materializations_by_target ON materializations (asset_key, partition_key, id);
CREATE INDEX materializations_by_run ON materializations (run_id, id);

CREATE TABLE events_v3 (
    id      INTEGER PRIMARY KEY,
    run_id  TEXT NOT NULL REFERENCES runs (id),
    -- A record, not a reference (steps are pruned).
    step_id INTEGER,
    at      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL,
    -- JSON text.
    data    TEXT NOT NULL DEFAULT 'null'
);
INSERT INTO events_v3 SELECT * FROM events;
DROP TABLE events;
ALTER TABLE events_v3 RENAME TO events;
CREATE INDEX events_by_run ON events (run_id, id);

-- A pruned run's step counts (JSON), as they were when its steps were deleted.
ALTER TABLE runs ADD COLUMN pruned_counts TEXT;

CREATE INDEX runs_to_prune ON runs (finished_at) WHERE pruned_counts IS NULL;
