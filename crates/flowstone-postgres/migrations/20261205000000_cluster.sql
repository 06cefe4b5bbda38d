-- Version 2: what many workers sharing one database need.

-- At most one live step per asset partition across all runs: two backfills
-- over the same range, or a backfill racing a materialize, never run the same
-- partition at once. An unpartitioned asset has partition_key NULL, folded to
-- '' here (a partition key is never empty).
CREATE UNIQUE INDEX steps_live_target ON steps (asset_key, coalesce(partition_key, ''))
    WHERE state IN ('pending', 'available', 'running', 'retryable');

-- Rescue finds running steps whose lease ran out.
CREATE INDEX steps_running_by_lease ON steps (lease_until) WHERE state = 'running';

-- Named leases, such as the leader's. `term` grows by one each time the lease
-- passes to another holder.
CREATE TABLE leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    term       bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
