-- FlowStone's SQLite schema, version 1.
--
-- Conventions:
-- - Timestamps are INTEGER microseconds since the Unix epoch (UTC).
-- - Run ids are TEXT UUIDs (v7, so they sort by creation); every other id is
--   an INTEGER PRIMARY KEY (the rowid).
-- - An unpartitioned asset has partition_key NULL; compare with `IS`.
-- - States are lowercase words checked by CHECK constraints; they are the
--   `as_str` names of flowstone_core's StepState and RunState.
-- - Every state change of a step is one UPDATE whose WHERE clause checks the
--   prior state (and, for a running step, attempt and worker). The store never
--   reads a state and writes it back in a second statement.

-- One request to materialize a selection of asset partitions.
CREATE TABLE runs (
    id           TEXT PRIMARY KEY NOT NULL,
    state        TEXT NOT NULL CHECK (state IN
                     ('running', 'succeeded', 'failed', 'interrupted', 'cancelled')),
    triggered_by TEXT NOT NULL,
    user_name    TEXT NOT NULL,
    description  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    -- Set when the run reaches a terminal state, cleared when it leaves one.
    finished_at  INTEGER
);

CREATE INDEX runs_by_created ON runs (created_at DESC, id DESC);

-- The queue: one row per asset partition of a run.
--
-- pending -> available -> running -> completed
--                            |  \--> retryable -> running ...
--                            \----> failed  (downstream pending -> skipped)
-- pending, available and retryable steps of a cancelled run -> cancelled.
CREATE TABLE steps (
    id                 INTEGER PRIMARY KEY,
    run_id             TEXT NOT NULL REFERENCES runs (id),
    asset_key          TEXT NOT NULL,
    partition_key      TEXT,
    state              TEXT NOT NULL CHECK (state IN
                           ('pending', 'available', 'running', 'retryable',
                            'completed', 'failed', 'skipped', 'cancelled')),
    -- Counted at claim: the first run of a step is attempt 1.
    attempt            INTEGER NOT NULL DEFAULT 0,
    max_attempts       INTEGER NOT NULL,
    -- Higher is claimed first.
    priority           INTEGER NOT NULL,
    -- When the step may be claimed: the run's creation for a fresh step, the
    -- retry time for a retryable one.
    scheduled_at       INTEGER NOT NULL,
    -- Upstream steps not yet completed; a pending step becomes available when
    -- this reaches 0.
    upstream_remaining INTEGER NOT NULL,
    -- The worker of the latest claim; kept after the step ends, as a record.
    worker             TEXT,
    -- Until when the latest claim holds; NULL unless running.
    lease_until        INTEGER,
    started_at         INTEGER,
    finished_at        INTEGER,
    error              TEXT
);

-- Claiming: the ready steps in claim order, per state (and per run, below).
CREATE INDEX steps_claim ON steps (state, priority DESC, scheduled_at, id);
-- Steps of a run: listing, counting by state, claiming within one run.
CREATE INDEX steps_by_run ON steps (run_id, state, priority DESC, scheduled_at, id);
-- Heartbeats and releases find a worker's running steps.
CREATE INDEX steps_running_by_worker ON steps (worker) WHERE state = 'running';
-- partitions(): the newest failure per partition of an asset.
CREATE INDEX steps_failed_by_target ON steps (asset_key, partition_key, finished_at)
    WHERE state = 'failed';

-- Edges of a run's step graph: downstream reads what upstream produces.
CREATE TABLE step_deps (
    upstream_id   INTEGER NOT NULL REFERENCES steps (id),
    downstream_id INTEGER NOT NULL REFERENCES steps (id),
    PRIMARY KEY (upstream_id, downstream_id)
) WITHOUT ROWID;

CREATE INDEX step_deps_by_downstream ON step_deps (downstream_id, upstream_id);

-- The append-only log of what happened in runs and steps.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    run_id  TEXT NOT NULL REFERENCES runs (id),
    step_id INTEGER REFERENCES steps (id),
    at      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL,
    -- JSON text.
    data    TEXT NOT NULL DEFAULT 'null'
);

CREATE INDEX events_by_run ON events (run_id, id);

-- One recorded production of one asset partition. Written in the same
-- transaction as its step's move to completed, never updated.
CREATE TABLE materializations (
    id            INTEGER PRIMARY KEY,
    asset_key     TEXT NOT NULL,
    partition_key TEXT,
    run_id        TEXT NOT NULL REFERENCES runs (id),
    step_id       INTEGER NOT NULL REFERENCES steps (id),
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

-- The latest materialization of a partition is the one with the highest id.
CREATE INDEX materializations_by_target ON materializations (asset_key, partition_key, id);
CREATE INDEX materializations_by_run ON materializations (run_id, id);

-- Lineage: the materialization `consumer_id` read `input_id`.
CREATE TABLE lineage (
    consumer_id INTEGER NOT NULL REFERENCES materializations (id),
    input_id    INTEGER NOT NULL REFERENCES materializations (id),
    PRIMARY KEY (consumer_id, input_id)
) WITHOUT ROWID;

CREATE INDEX lineage_by_input ON lineage (input_id, consumer_id);

-- Worker processes that claim steps.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
