//! Writes: runs, the queue's state changes, events and workers.
//!
//! Each method is one transaction (or one statement, which PostgreSQL runs as
//! its own). Dropping a method's future before it returns drops the
//! transaction, which sqlx rolls back before the connection is used again, so
//! a cancelled call leaves nothing behind and may be retried.
//!
//! Batch items travel as arrays, one per column, read in SQL with `unnest`,
//! so a batch of 256 steps costs the same number of round trips as a batch of
//! one.
//!
//! Time: the database clock decides what is due and how long a claim holds
//! (`now()` in claims and heartbeats), so workers on machines whose clocks
//! disagree still agree on leases. The caller's `now` is what is *recorded*
//! (when a step started or finished, a worker's heartbeat), and a retry time
//! is the caller's `retry_at`, as the trait hands it over.

use std::collections::HashSet;

use flowstone_core::store::{
    ClaimRequest, ClaimedStep, Completion, EventKind, Failure, Level, NewEvent, NewRun, Outcome,
    RunRecord, RunState, StepState, StoreError, StoreResult, WorkerRecord,
};
use flowstone_core::{AssetPartition, MaterializationId, RunId, StepId, WorkerId};
use jiff::Timestamp;
use serde_json::json;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};
use uuid::Uuid;

use crate::PostgresStore;
use crate::codec::{self, DbResult, PgTime};

/// The claim's update, shared by both claim statements: the picked steps
/// become `running` under `$1` with a lease on the database clock, and come
/// back with their runs' trigger and user.
macro_rules! claim_sql {
    ($run_filter:literal) => {
        concat!(
            "WITH picked AS ( \
                 SELECT id FROM steps \
                 WHERE state IN ('available', 'retryable') \
                   AND (state = 'available' OR scheduled_at <= now()) \
                   AND run_id IN (SELECT id FROM runs WHERE state = 'running') ",
            $run_filter,
            "    ORDER BY priority DESC, scheduled_at, id \
                 LIMIT $4 \
                 FOR UPDATE SKIP LOCKED) \
             UPDATE steps AS s \
             SET state = 'running', attempt = s.attempt + 1, worker = $1, started_at = $2, \
                 lease_until = now() + $3 * interval '1 microsecond', finished_at = NULL \
             FROM picked, runs AS r \
             WHERE s.id = picked.id AND r.id = s.run_id \
             RETURNING s.id, s.run_id, s.asset_key, s.partition_key, s.attempt, \
                 s.max_attempts, s.priority, s.scheduled_at, r.triggered_by, r.user_name"
        )
    };
}

/// Claims from every `running` run (an interrupted run is paused for every
/// worker until it is resumed).
const CLAIM_ANY: &str = claim_sql!("");

/// Claims from one run (`$5`).
const CLAIM_RUN: &str = claim_sql!("AND run_id = $5");

/// Moves running steps to completed, checking attempt and worker (an id named
/// twice, with another attempt or worker, matches at most once). Locks the
/// batch's steps in id order first, found by primary key: an `IN (subquery)`
/// here let the planner scan the whole table. Returns the claims that moved.
const FENCE_COMPLETE: &str = "WITH locked AS ( \
         SELECT id FROM steps WHERE id = ANY($1) ORDER BY id FOR UPDATE) \
     UPDATE steps AS s \
     SET state = 'completed', finished_at = b.finished_at, lease_until = NULL, error = NULL \
     FROM locked, \
         unnest($1::int8[], $2::int8[], $3::text[], $4::timestamptz[]) \
             AS b (id, attempt, worker, finished_at) \
     WHERE s.id = locked.id AND b.id = locked.id AND s.state = 'running' \
       AND s.attempt = b.attempt AND s.worker = b.worker \
     RETURNING s.id, s.attempt, s.worker";

/// Inserts materializations, one per array element, in array order.
const INSERT_MATERIALIZATIONS: &str = "INSERT INTO materializations \
     (step_id, asset_key, partition_key, run_id, attempt, started_at, finished_at, \
      triggered_by, user_name, code_version, data_version, metadata, location, io_manager) \
     SELECT step_id, asset_key, partition_key, run_id, attempt, started_at, finished_at, \
            triggered_by, user_name, code_version, data_version, metadata, location, io_manager \
     FROM unnest($1::int8[], $2::text[], $3::text[], $4::uuid[], $5::int8[], \
                 $6::timestamptz[], $7::timestamptz[], $8::text[], $9::text[], $10::text[], \
                 $11::text[], $12::jsonb[], $13::text[], $14::text[]) \
         WITH ORDINALITY AS m (step_id, asset_key, partition_key, run_id, attempt, started_at, \
             finished_at, triggered_by, user_name, code_version, data_version, metadata, \
             location, io_manager, ord) \
     ORDER BY ord \
     RETURNING id, step_id";

/// Inserts lineage edges `(consumer, input)`.
const INSERT_LINEAGE: &str = "INSERT INTO lineage (consumer_id, input_id) \
     SELECT * FROM unnest($1::int8[], $2::int8[]) \
     ON CONFLICT DO NOTHING";

/// Counts the completion of the steps in `$1` against their downstream steps;
/// a pending step with nothing left to wait for becomes available. Locks the
/// downstream steps in id order first, as every batch does.
const RELEASE_DOWNSTREAM: &str = "WITH d AS ( \
         SELECT downstream_id AS id, count(*)::int4 AS n FROM step_deps \
         WHERE upstream_id = ANY($1) GROUP BY downstream_id), \
     locked AS ( \
         SELECT id FROM steps WHERE id = ANY(ARRAY(SELECT id FROM d)) \
         ORDER BY id FOR UPDATE) \
     UPDATE steps AS s \
     SET upstream_remaining = s.upstream_remaining - d.n, \
         state = CASE WHEN s.state = 'pending' AND s.upstream_remaining - d.n <= 0 \
                      THEN 'available' ELSE s.state END \
     FROM locked, d \
     WHERE s.id = locked.id AND d.id = locked.id";

/// Moves running steps to retryable (with a retry time) or failed, checking
/// attempt and worker.
const FENCE_FAIL: &str = "WITH locked AS ( \
         SELECT id FROM steps WHERE id = ANY($1) ORDER BY id FOR UPDATE) \
     UPDATE steps AS s \
     SET state = CASE WHEN b.retry_at IS NULL THEN 'failed' ELSE 'retryable' END, \
         scheduled_at = coalesce(b.retry_at, s.scheduled_at), \
         error = b.error, finished_at = b.finished_at, lease_until = NULL \
     FROM locked, \
         unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::timestamptz[], \
                $6::timestamptz[]) AS b (id, attempt, worker, error, retry_at, finished_at) \
     WHERE s.id = locked.id AND b.id = locked.id AND s.state = 'running' \
       AND s.attempt = b.attempt AND s.worker = b.worker \
     RETURNING s.id, s.attempt, s.worker, s.state, s.asset_key, s.partition_key";

/// Skips every pending step downstream of the failed steps in `$1` (with
/// their causes in `$2`), transitively; the walk stops at steps that are not
/// pending, whose own downstream steps were dealt with when they left pending.
const SKIP_DOWNSTREAM: &str = "WITH RECURSIVE down (id, cause) AS ( \
         SELECT d.downstream_id, r.cause \
         FROM unnest($1::int8[], $2::text[]) AS r (id, cause) \
         JOIN step_deps AS d ON d.upstream_id = r.id \
         JOIN steps AS s ON s.id = d.downstream_id AND s.state = 'pending' \
         UNION \
         SELECT d.downstream_id, down.cause \
         FROM down \
         JOIN step_deps AS d ON d.upstream_id = down.id \
         JOIN steps AS s ON s.id = d.downstream_id AND s.state = 'pending'), \
     c AS (SELECT id, min(cause) AS cause FROM down GROUP BY id), \
     locked AS ( \
         SELECT id FROM steps WHERE id = ANY(ARRAY(SELECT id FROM c)) \
         ORDER BY id FOR UPDATE) \
     UPDATE steps AS s SET state = 'skipped', error = c.cause, finished_at = $3 \
     FROM locked, c \
     WHERE s.id = locked.id AND c.id = locked.id AND s.state = 'pending' \
     RETURNING s.id, s.run_id, s.error";

/// Moves the running steps of the workers in `$1` (of run `$2`, if not null)
/// back to available.
const RELEASE: &str = "WITH locked AS ( \
         SELECT id FROM steps \
         WHERE state = 'running' AND worker = ANY($1) AND ($2::uuid IS NULL OR run_id = $2) \
         ORDER BY id FOR UPDATE) \
     UPDATE steps AS s SET state = 'available', lease_until = NULL \
     FROM locked \
     WHERE s.id = locked.id AND s.state = 'running' \
     RETURNING s.id, s.run_id, s.worker, s.attempt";

/// Inserts events, one per array element, in array order, so that event ids
/// follow it, and notifies the `flowstone` channel once per run with the run
/// id; PostgreSQL delivers the notifications when the transaction commits.
const INSERT_EVENTS: &str = "WITH inserted AS ( \
         INSERT INTO events (run_id, step_id, at, kind, level, message, data) \
         SELECT run_id, step_id, at, kind, level, message, data \
         FROM unnest($1::uuid[], $2::int8[], $3::timestamptz[], $4::text[], $5::text[], \
                     $6::text[], $7::jsonb[]) \
             WITH ORDINALITY AS e (run_id, step_id, at, kind, level, message, data, ord) \
         ORDER BY ord \
         RETURNING run_id) \
     SELECT pg_notify('flowstone', run_id::text) FROM (SELECT DISTINCT run_id FROM inserted) AS r";

impl PostgresStore {
    pub(crate) async fn write_create_run(&self, run: NewRun) -> StoreResult<RunRecord> {
        // Check the step graph before touching the database.
        let upstream = run.checked_upstream()?;
        let n = upstream.len();

        let mut tx = self.pool.begin().await.db()?;
        sqlx::query(
            "INSERT INTO runs (id, state, triggered_by, user_name, description, created_at) \
             VALUES ($1, 'running', $2, $3, $4, $5)",
        )
        .bind(run.id.0)
        .bind(run.trigger.as_str())
        .bind(codec::text(&run.user))
        .bind(codec::text(&run.description))
        .bind(PgTime(run.created_at))
        .execute(&mut *tx)
        .await
        .db()?;

        // Ids come from the sequence before the insert, so that the dependency
        // edges can name them; ascending, so that ids follow the plan's order.
        let mut ids: Vec<i64> = sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('steps', 'id')) FROM generate_series(1, $1)",
        )
        .bind(n as i64)
        .fetch_all(&mut *tx)
        .await
        .db()?;
        ids.sort_unstable();
        if ids.len() != n {
            return Err(StoreError::Corrupt(format!(
                "the step id sequence gave {} ids for {n} steps",
                ids.len()
            )));
        }

        let mut assets = Vec::with_capacity(n);
        let mut partitions = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut max_attempts = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut waits = Vec::with_capacity(n);
        for (step, ups) in run.steps.iter().zip(&upstream) {
            let state = if ups.is_empty() {
                StepState::Available
            } else {
                StepState::Pending
            };
            assets.push(step.target.asset.as_str());
            partitions.push(
                step.target
                    .partition
                    .as_ref()
                    .map(|p| codec::text(p.as_str())),
            );
            states.push(state.as_str());
            max_attempts.push(codec::max_attempts(step.max_attempts));
            priorities.push(step.priority);
            waits.push(i32::try_from(ups.len()).unwrap_or(i32::MAX));
        }
        // The unique index on live steps refuses an asset partition that
        // another run holds live; the run is then not created at all.
        let inserted = sqlx::query(
            "INSERT INTO steps (id, run_id, asset_key, partition_key, state, max_attempts, \
                 priority, scheduled_at, upstream_remaining) \
             SELECT t.id, $1, t.asset_key, t.partition_key, t.state, t.max_attempts, \
                 t.priority, $2, t.waits \
             FROM unnest($3::int8[], $4::text[], $5::text[], $6::text[], $7::int4[], \
                         $8::int4[], $9::int4[]) \
                 AS t (id, asset_key, partition_key, state, max_attempts, priority, waits)",
        )
        .bind(run.id.0)
        .bind(PgTime(run.created_at))
        .bind(&ids)
        .bind(&assets)
        .bind(&partitions)
        .bind(&states)
        .bind(&max_attempts)
        .bind(&priorities)
        .bind(&waits)
        .execute(&mut *tx)
        .await;
        if let Err(err) = inserted {
            if !is_live_conflict(&err) {
                return Err(StoreError::backend(err));
            }
            // Roll back, then name what is live elsewhere.
            tx.rollback().await.db()?;
            let targets: Vec<AssetPartition> = run.steps.iter().map(|s| s.target.clone()).collect();
            let live = self.read_live_steps(&targets).await?;
            return Err(StoreError::live_conflict(&run, &live));
        }

        let (ups, downs): (Vec<i64>, Vec<i64>) = upstream
            .iter()
            .enumerate()
            .flat_map(|(down, ups)| ups.iter().map(move |&up| (up, down)))
            .map(|(up, down)| (ids[up], ids[down]))
            .unzip();
        if !ups.is_empty() {
            sqlx::query(
                "INSERT INTO step_deps (upstream_id, downstream_id) \
                 SELECT * FROM unnest($1::int8[], $2::int8[])",
            )
            .bind(&ups)
            .bind(&downs)
            .execute(&mut *tx)
            .await
            .db()?;
        }

        // Idle workers wake when this commits.
        sqlx::query("SELECT pg_notify('flowstone', $1::text)")
            .bind(run.id.0)
            .execute(&mut *tx)
            .await
            .db()?;
        tx.commit().await.db()?;

        Ok(run.into_record(&upstream))
    }

    pub(crate) async fn write_claim(&self, req: ClaimRequest) -> StoreResult<Vec<ClaimedStep>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await.db()?;
        claim_in(&mut conn, &req).await
    }

    pub(crate) async fn write_complete_and_claim(
        &self,
        batch: Vec<Completion>,
        next: ClaimRequest,
    ) -> StoreResult<(Vec<Outcome>, Vec<ClaimedStep>)> {
        let mut tx = self.pool.begin().await.db()?;
        let outcomes = complete_in(&mut tx, &batch).await?;
        // The claim sees the steps the batch released: they are this
        // transaction's own rows, so SKIP LOCKED does not skip them.
        let claimed = if next.limit == 0 {
            Vec::new()
        } else {
            claim_in(&mut tx, &next).await?
        };
        tx.commit().await.db()?;
        log_fenced("complete", &batch, &outcomes, |c| {
            (c.step, c.attempt, &c.worker)
        });
        Ok((outcomes, claimed))
    }

    pub(crate) async fn write_complete(&self, batch: Vec<Completion>) -> StoreResult<Vec<Outcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.db()?;
        let outcomes = complete_in(&mut tx, &batch).await?;
        tx.commit().await.db()?;
        log_fenced("complete", &batch, &outcomes, |c| {
            (c.step, c.attempt, &c.worker)
        });
        Ok(outcomes)
    }

    pub(crate) async fn write_fail(&self, batch: Vec<Failure>) -> StoreResult<Vec<Outcome>> {
        let mut outcomes = vec![Outcome::Fenced; batch.len()];
        if batch.is_empty() {
            return Ok(outcomes);
        }
        let firsts = first_per_claim(batch.iter().map(|f| (f.step, f.attempt, &f.worker)));
        let mut fence = FenceColumns::default();
        let mut errors = Vec::with_capacity(firsts.len());
        let mut retry_at = Vec::with_capacity(firsts.len());
        let mut finished = Vec::with_capacity(firsts.len());
        for &i in &firsts {
            let f = &batch[i];
            fence.push(f.step, f.attempt, &f.worker);
            errors.push(codec::text(&f.error));
            retry_at.push(f.retry_at.map(PgTime));
            finished.push(PgTime(f.finished_at));
        }
        let skipped_at = batch
            .iter()
            .map(|f| f.finished_at)
            .max()
            .unwrap_or_else(Timestamp::now);

        let mut tx = self.pool.begin().await.db()?;

        // Fence: only steps still running under this attempt and worker move.
        let rows = sqlx::query(FENCE_FAIL)
            .bind(&fence.ids)
            .bind(&fence.attempts)
            .bind(&fence.workers)
            .bind(&errors)
            .bind(&retry_at)
            .bind(&finished)
            .fetch_all(&mut *tx)
            .await
            .db()?;
        let mut moved = HashSet::new();
        let (mut failed, mut causes) = (Vec::new(), Vec::new());
        for row in &rows {
            moved.insert(claim_of(row)?);
            let state: String = row.try_get("state").db()?;
            if codec::step_state(&state)? == StepState::Failed {
                failed.push(row.try_get::<i64, _>("id").db()?);
                causes.push(format!("upstream {} failed", codec::target(row)?));
            }
        }

        // Record: the callers' events for the items that moved.
        let mut events = EventColumns::default();
        for i in firsts {
            let f = &batch[i];
            if moved.contains(&(f.step.0, i64::from(f.attempt), f.worker.0.clone())) {
                outcomes[i] = Outcome::Recorded(None);
                for event in &f.events {
                    events.push(event);
                }
            }
        }

        // Skip: everything pending downstream of a final failure.
        skip_downstream_in(&mut tx, &failed, &causes, skipped_at, &mut events).await?;
        events.insert(&mut tx).await?;

        tx.commit().await.db()?;
        log_fenced("fail", &batch, &outcomes, |f| {
            (f.step, f.attempt, &f.worker)
        });
        Ok(outcomes)
    }

    pub(crate) async fn write_release(
        &self,
        run: Option<RunId>,
        workers: &[WorkerId],
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<StepId>> {
        if workers.is_empty() {
            return Ok(Vec::new());
        }
        let workers: Vec<&str> = workers.iter().map(|w| w.0.as_str()).collect();

        let mut tx = self.pool.begin().await.db()?;
        let rows = sqlx::query(RELEASE)
            .bind(&workers)
            .bind(run.map(|r| r.0))
            .fetch_all(&mut *tx)
            .await
            .db()?;

        let mut released = Vec::with_capacity(rows.len());
        let mut events = EventColumns::default();
        for row in &rows {
            let id = StepId(row.try_get("id").db()?);
            let worker: Option<String> = row.try_get("worker").db()?;
            let attempt: i32 = row.try_get("attempt").db()?;
            events.push(&NewEvent {
                run_id: codec::run_id(row, "run_id")?,
                step_id: Some(id),
                at: now,
                kind: EventKind::StepReleased,
                level: Level::Warn,
                message: reason.to_owned(),
                data: json!({ "worker": worker, "attempt": attempt }),
            });
            released.push(id);
        }
        events.insert(&mut tx).await?;

        tx.commit().await.db()?;
        released.sort();
        Ok(released)
    }

    pub(crate) async fn write_run_state(
        &self,
        run: RunId,
        from: &[RunState],
        to: RunState,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let finished_at = to.is_terminal().then_some(PgTime(now));

        let mut tx = self.pool.begin().await.db()?;
        let changed = sqlx::query(
            "UPDATE runs SET state = $1, finished_at = $2 WHERE id = $3 AND state = ANY($4)",
        )
        .bind(to.as_str())
        .bind(finished_at)
        .bind(run.0)
        .bind(&from)
        .execute(&mut *tx)
        .await
        .db()?
        .rows_affected();
        if changed == 0 {
            ensure_run_exists(&mut tx, run).await?;
        }
        tx.commit().await.db()?;
        Ok(changed > 0)
    }

    pub(crate) async fn write_cancel_run(&self, run: RunId, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.db()?;

        let changed = sqlx::query(
            "UPDATE runs SET state = 'cancelled', finished_at = $2 \
             WHERE id = $1 AND state IN ('running', 'interrupted')",
        )
        .bind(run.0)
        .bind(PgTime(now))
        .execute(&mut *tx)
        .await
        .db()?
        .rows_affected();
        if changed == 0 {
            ensure_run_exists(&mut tx, run).await?;
            tx.commit().await.db()?;
            return Ok(false);
        }

        // Steps that have not started end here; running ones finish.
        sqlx::query(
            "WITH locked AS ( \
                 SELECT id FROM steps \
                 WHERE run_id = $1 AND state IN ('pending', 'available', 'retryable') \
                 ORDER BY id FOR UPDATE) \
             UPDATE steps AS s SET state = 'cancelled', finished_at = $2 \
             FROM locked \
             WHERE s.id = locked.id AND s.state IN ('pending', 'available', 'retryable')",
        )
        .bind(run.0)
        .bind(PgTime(now))
        .execute(&mut *tx)
        .await
        .db()?;

        tx.commit().await.db()?;
        Ok(true)
    }

    pub(crate) async fn write_events(&self, events: Vec<NewEvent>) -> StoreResult<()> {
        let mut columns = EventColumns::default();
        for event in &events {
            columns.push(event);
        }
        let mut conn = self.pool.acquire().await.db()?;
        columns.insert(&mut conn).await
    }

    pub(crate) async fn write_register_worker(&self, worker: &WorkerRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO workers (id, host, pid, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(codec::text(&worker.id.0))
        .bind(codec::text(&worker.host))
        .bind(i64::from(worker.pid))
        .bind(PgTime(worker.started_at))
        .bind(PgTime(worker.heartbeat_at))
        .execute(&self.pool)
        .await
        .db()?;
        Ok(())
    }

    pub(crate) async fn write_heartbeat(
        &self,
        worker: &WorkerId,
        now: Timestamp,
        lease: jiff::SignedDuration,
    ) -> StoreResult<bool> {
        // One statement: the leases run from the database clock, the
        // heartbeat records the worker's.
        let registered = sqlx::query(
            "WITH leases AS ( \
                 UPDATE steps SET lease_until = now() + $3 * interval '1 microsecond' \
                 WHERE state = 'running' AND worker = $1) \
             UPDATE workers SET heartbeat_at = $2 WHERE id = $1",
        )
        .bind(worker.0.as_str())
        .bind(PgTime(now))
        .bind(codec::lease_micros(lease))
        .execute(&self.pool)
        .await
        .db()?
        .rows_affected();
        Ok(registered > 0)
    }

    pub(crate) async fn write_deregister_worker(&self, worker: &WorkerId) -> StoreResult<()> {
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(worker.0.as_str())
            .execute(&self.pool)
            .await
            .db()?;
        Ok(())
    }
}

/// Records a batch of completions inside the caller's transaction: fence,
/// materializations, lineage, events, release of downstream steps.
async fn complete_in(conn: &mut PgConnection, batch: &[Completion]) -> StoreResult<Vec<Outcome>> {
    let mut outcomes = vec![Outcome::Fenced; batch.len()];
    // The same claim named twice in one batch completes once: the first
    // item wins, the repeat is fenced as it would be in a later batch.
    let firsts = first_per_claim(batch.iter().map(|c| (c.step, c.attempt, &c.worker)));
    let mut fence = FenceColumns::default();
    for &i in &firsts {
        let c = &batch[i];
        fence.push(c.step, c.attempt, &c.worker);
    }
    let finished: Vec<PgTime> = firsts
        .iter()
        .map(|&i| PgTime(batch[i].materialization.finished_at))
        .collect();

    // Fence: only steps still running under this attempt and worker move.
    let rows = sqlx::query(FENCE_COMPLETE)
        .bind(&fence.ids)
        .bind(&fence.attempts)
        .bind(&fence.workers)
        .bind(&finished)
        .fetch_all(&mut *conn)
        .await
        .db()?;
    let moved = rows
        .iter()
        .map(claim_of)
        .collect::<StoreResult<HashSet<_>>>()?;
    let recorded: Vec<usize> = firsts
        .into_iter()
        .filter(|&i| {
            let c = &batch[i];
            moved.contains(&(c.step.0, i64::from(c.attempt), c.worker.0.clone()))
        })
        .collect();
    if recorded.is_empty() {
        return Ok(outcomes);
    }

    // Record: the materializations, then what needs their ids.
    let ids = insert_materializations(conn, batch, &recorded).await?;
    let mut consumers = Vec::new();
    let mut inputs = Vec::new();
    let mut events = EventColumns::default();
    for (&i, &id) in recorded.iter().zip(&ids) {
        let c = &batch[i];
        outcomes[i] = Outcome::Recorded(Some(MaterializationId(id)));
        for input in &c.inputs {
            consumers.push(id);
            inputs.push(input.0);
        }
        for event in &c.events {
            events.push(event);
        }
        events.push(&materialized_event(c, id));
    }
    if !consumers.is_empty() {
        sqlx::query(INSERT_LINEAGE)
            .bind(&consumers)
            .bind(&inputs)
            .execute(&mut *conn)
            .await
            .db()?;
    }
    events.insert(conn).await?;

    // Release: downstream steps count these completions.
    let done: Vec<i64> = recorded.iter().map(|&i| batch[i].step.0).collect();
    sqlx::query(RELEASE_DOWNSTREAM)
        .bind(&done)
        .execute(&mut *conn)
        .await
        .db()?;

    Ok(outcomes)
}

/// Claims inside the caller's transaction (or as one statement); `req.limit`
/// is not 0.
async fn claim_in(conn: &mut PgConnection, req: &ClaimRequest) -> StoreResult<Vec<ClaimedStep>> {
    // Claim: one statement picks the ready steps in order, skipping those
    // another claimer holds, takes them and reads their runs.
    let query = match req.run {
        Some(_) => sqlx::query(CLAIM_RUN),
        None => sqlx::query(CLAIM_ANY),
    };
    let mut query = query
        .bind(codec::text(&req.worker.0).into_owned())
        .bind(PgTime(req.now))
        .bind(codec::lease_micros(req.lease))
        .bind(i64::from(req.limit));
    if let Some(run) = req.run {
        query = query.bind(run.0);
    }
    let rows = query.fetch_all(&mut *conn).await.db()?;

    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let order: (i32, Timestamp, i64) = (
            row.try_get("priority").db()?,
            codec::time(&row, "scheduled_at")?,
            row.try_get("id").db()?,
        );
        let trigger: String = row.try_get("triggered_by").db()?;
        let step = ClaimedStep {
            id: StepId(order.2),
            run_id: codec::run_id(&row, "run_id")?,
            target: codec::target(&row)?,
            attempt: codec::count("steps.attempt", row.try_get("attempt").db()?)?,
            max_attempts: codec::count("steps.max_attempts", row.try_get("max_attempts").db()?)?,
            trigger: trigger.parse()?,
            user: row.try_get("user_name").db()?,
        };
        claimed.push((order, step));
    }

    // RETURNING gives no order; hand the steps out in claim order.
    claimed.sort_by_key(|((priority, at, id), _)| (-i64::from(*priority), *at, *id));
    Ok(claimed.into_iter().map(|(_, step)| step).collect())
}

/// Skips, inside the caller's transaction, every pending step downstream of
/// the `failed` steps (each with its cause), adding one `step_skipped` event
/// per skipped step to `events`.
pub(crate) async fn skip_downstream_in(
    conn: &mut PgConnection,
    failed: &[i64],
    causes: &[String],
    at: Timestamp,
    events: &mut EventColumns,
) -> StoreResult<()> {
    if failed.is_empty() {
        return Ok(());
    }
    let skipped = sqlx::query(SKIP_DOWNSTREAM)
        .bind(failed)
        .bind(causes)
        .bind(PgTime(at))
        .fetch_all(&mut *conn)
        .await
        .db()?;
    for row in &skipped {
        let error: Option<String> = row.try_get("error").db()?;
        events.push(&NewEvent {
            run_id: codec::run_id(row, "run_id")?,
            step_id: Some(StepId(row.try_get("id").db()?)),
            at,
            kind: EventKind::StepSkipped,
            level: Level::Warn,
            message: error.unwrap_or_default(),
            data: serde_json::Value::Null,
        });
    }
    Ok(())
}

/// The fenced claims of a batch, one array per column.
#[derive(Default)]
struct FenceColumns<'a> {
    ids: Vec<i64>,
    attempts: Vec<i64>,
    workers: Vec<&'a str>,
}

impl<'a> FenceColumns<'a> {
    fn push(&mut self, step: StepId, attempt: u32, worker: &'a WorkerId) {
        self.ids.push(step.0);
        self.attempts.push(i64::from(attempt));
        self.workers.push(&worker.0);
    }
}

/// Events to insert, one array per column.
#[derive(Default)]
pub(crate) struct EventColumns {
    runs: Vec<Uuid>,
    steps: Vec<Option<i64>>,
    at: Vec<PgTime>,
    kinds: Vec<&'static str>,
    levels: Vec<&'static str>,
    messages: Vec<String>,
    data: Vec<serde_json::Value>,
}

impl EventColumns {
    pub(crate) fn push(&mut self, e: &NewEvent) {
        self.runs.push(e.run_id.0);
        self.steps.push(e.step_id.map(|s| s.0));
        self.at.push(PgTime(e.at));
        self.kinds.push(e.kind.as_str());
        self.levels.push(e.level.as_str());
        self.messages.push(codec::text(&e.message).into_owned());
        self.data.push(codec::json(&e.data));
    }

    /// Inserts the events, if any, in the order pushed.
    pub(crate) async fn insert(self, conn: &mut PgConnection) -> StoreResult<()> {
        if self.runs.is_empty() {
            return Ok(());
        }
        sqlx::query(INSERT_EVENTS)
            .bind(&self.runs)
            .bind(&self.steps)
            .bind(&self.at)
            .bind(&self.kinds)
            .bind(&self.levels)
            .bind(&self.messages)
            .bind(&self.data)
            .execute(&mut *conn)
            .await
            .db()?;
        Ok(())
    }
}

/// Inserts the materializations of `batch[recorded]`; returns their ids in
/// the same order.
async fn insert_materializations(
    conn: &mut PgConnection,
    batch: &[Completion],
    recorded: &[usize],
) -> StoreResult<Vec<i64>> {
    let n = recorded.len();
    let mut steps = Vec::with_capacity(n);
    let mut assets = Vec::with_capacity(n);
    let mut partitions = Vec::with_capacity(n);
    let mut runs = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);
    let mut finished = Vec::with_capacity(n);
    let mut triggers = Vec::with_capacity(n);
    let mut users = Vec::with_capacity(n);
    let mut code_versions = Vec::with_capacity(n);
    let mut data_versions = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut locations = Vec::with_capacity(n);
    let mut io_managers = Vec::with_capacity(n);
    for &i in recorded {
        let c = &batch[i];
        let m = &c.materialization;
        steps.push(c.step.0);
        assets.push(m.target.asset.as_str());
        partitions.push(m.target.partition.as_ref().map(|p| codec::text(p.as_str())));
        runs.push(m.run_id.0);
        attempts.push(i64::from(c.attempt));
        started.push(PgTime(m.started_at));
        finished.push(PgTime(m.finished_at));
        triggers.push(m.trigger.as_str());
        users.push(codec::text(&m.user));
        code_versions.push(codec::text(&m.code_version));
        data_versions.push(codec::text(&m.data_version));
        metadata.push(codec::json_object(&m.metadata));
        locations.push(codec::text(&m.location));
        io_managers.push(codec::text(&m.io_manager));
    }

    let rows = sqlx::query(INSERT_MATERIALIZATIONS)
        .bind(&steps)
        .bind(&assets)
        .bind(&partitions)
        .bind(&runs)
        .bind(&attempts)
        .bind(&started)
        .bind(&finished)
        .bind(&triggers)
        .bind(&users)
        .bind(&code_versions)
        .bind(&data_versions)
        .bind(&metadata)
        .bind(&locations)
        .bind(&io_managers)
        .fetch_all(&mut *conn)
        .await
        .db()?;

    // RETURNING gives no order; match the ids back by step (one per step).
    let mut by_step = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        by_step.insert(
            row.try_get::<i64, _>("step_id").db()?,
            row.try_get::<i64, _>("id").db()?,
        );
    }
    steps
        .iter()
        .map(|step| {
            by_step.get(step).copied().ok_or_else(|| {
                StoreError::Corrupt(format!("no materialization came back for step {step}"))
            })
        })
        .collect()
}

/// Whether `err` is the unique index on live steps refusing a second live
/// step for an asset partition.
fn is_live_conflict(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.constraint() == Some("steps_live_target"))
}

/// Logs each fenced item at debug: a worker lost its claim, which is worth
/// knowing but not an error.
fn log_fenced<T>(
    call: &'static str,
    batch: &[T],
    outcomes: &[Outcome],
    claim: impl Fn(&T) -> (StepId, u32, &WorkerId),
) {
    for (item, outcome) in batch.iter().zip(outcomes) {
        if *outcome == Outcome::Fenced {
            let (step, attempt, worker) = claim(item);
            tracing::debug!(call, step_id = step.0, attempt, worker = %worker, "fenced");
        }
    }
}

/// The index of the first item for each claim (step, attempt, worker), in
/// batch order.
fn first_per_claim<'a>(claims: impl Iterator<Item = (StepId, u32, &'a WorkerId)>) -> Vec<usize> {
    let mut seen = HashSet::new();
    claims
        .enumerate()
        .filter(|(_, claim)| seen.insert(*claim))
        .map(|(i, _)| i)
        .collect()
}

/// The claim a fenced `UPDATE ... RETURNING id, attempt, worker` moved.
fn claim_of(row: &PgRow) -> StoreResult<(i64, i64, String)> {
    Ok((
        row.try_get("id").db()?,
        i64::from(row.try_get::<i32, _>("attempt").db()?),
        row.try_get::<Option<String>, _>("worker")
            .db()?
            .unwrap_or_default(),
    ))
}

/// The event the store adds for each recorded completion.
fn materialized_event(c: &Completion, id: i64) -> NewEvent {
    let m = &c.materialization;
    NewEvent {
        run_id: m.run_id,
        step_id: Some(c.step),
        at: m.finished_at,
        kind: EventKind::Materialized,
        level: Level::Info,
        message: format!("materialized {}", AssetPartition::clone(&m.target)),
        data: json!({
            "materialization_id": id,
            "asset": m.target.asset.as_str(),
            "partition": m.target.partition.as_ref().map(|p| p.as_str()),
            "attempt": c.attempt,
        }),
    }
}

/// Fails with `NotFound` when `run` has no row.
async fn ensure_run_exists(conn: &mut PgConnection, run: RunId) -> StoreResult<()> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM runs WHERE id = $1")
        .bind(run.0)
        .fetch_optional(&mut *conn)
        .await
        .db()?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(format!("no run {run} in the store"))),
    }
}
