-- Version 2: the same rules as the PostgreSQL store's version 2.

-- At most one live step per asset partition across all runs (partition_key
-- NULL, for an unpartitioned asset, folded to '').
CREATE UNIQUE INDEX steps_live_target ON steps (asset_key, ifnull(partition_key, ''))
    WHERE state IN ('pending', 'available', 'running', 'retryable');

-- Rescue finds running steps whose lease ran out.
CREATE INDEX steps_running_by_lease ON steps (lease_until) WHERE state = 'running';

-- Named leases, such as the leader's; times in microseconds since the epoch.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    term       INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
