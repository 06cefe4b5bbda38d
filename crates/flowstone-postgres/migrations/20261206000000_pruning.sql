-- Version 3: finished queue rows can be pruned.
--
-- The leader deletes the steps (and their dependency edges) of runs that
-- ended longer ago than the retention, keeping failed steps (the status of a
-- partition that failed reads them). Materializations, lineage and events are
-- history and are never pruned, so their step ids stay as a record without a
-- foreign key to the step rows.
ALTER TABLE materializations DROP CONSTRAINT materializations_step_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_step_id_fkey;

-- A pruned run's step counts, as they were when its steps were deleted.
ALTER TABLE runs ADD COLUMN pruned_counts jsonb;

-- Pruning finds ended runs oldest first.
CREATE INDEX runs_to_prune ON runs (finished_at) WHERE pruned_counts IS NULL;
