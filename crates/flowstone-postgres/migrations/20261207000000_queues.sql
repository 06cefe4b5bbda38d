-- Version 4: queues with cluster-wide limits, and runs with a cap on steps
-- running at once.

-- The queue an asset's steps wait in; a queue may have a limit on running
-- steps that holds across every worker.
ALTER TABLE steps ADD COLUMN queue text NOT NULL DEFAULT 'default';

-- At most this many of the run's steps running at once, across every worker;
-- NULL: no cap.
ALTER TABLE runs ADD COLUMN max_parallel integer
    CHECK (max_parallel IS NULL OR max_parallel > 0);

-- A limited claim counts the running steps of each limited queue...
CREATE INDEX steps_running_by_queue ON steps (queue) WHERE state = 'running';
-- ...looks for ready steps in a queue...
CREATE INDEX steps_ready_by_queue ON steps (queue, priority DESC, scheduled_at, id)
    WHERE state IN ('available', 'retryable');
-- ...and finds the capped runs (counting their running steps by steps_by_run).
CREATE INDEX runs_capped ON runs (id) WHERE state = 'running' AND max_parallel IS NOT NULL;
