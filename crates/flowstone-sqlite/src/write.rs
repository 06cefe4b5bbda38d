//! Writes: runs, the queue's state changes, events and workers.
//!
//! Each method is one `BEGIN IMMEDIATE` transaction on the writer connection.
//! Dropping a method's future before it returns rolls the transaction back (the
//! rollback is queued on the connection and runs before its next statement), so
//! a cancelled call leaves nothing behind and may be retried.
//!
//! Batch items travel as one JSON array parameter, read in SQL with
//! `jsonb_each`, so a batch of 256 steps costs the same number of statements
//! as a batch of one. `jsonb_each` rather than `json_each`: it parses the text
//! once and hands out each element in binary form, so the `->>` extractions
//! that follow do not parse the element again.
//!
//! Fencing `UPDATE`s write `+steps.state` to keep SQLite from driving the
//! update from the state index (all running steps, then the batch for each):
//! the batch is the outer loop and each item a rowid lookup.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use flowstone_core::slots::{Candidate, Chooser, Slots};
use flowstone_core::store::{
    ClaimRequest, ClaimedStep, Completion, EventKind, Failure, Level, NewEvent, NewRun, Outcome,
    RunRecord, RunState, StepState, StoreError, StoreResult, WorkerRecord,
};
use flowstone_core::{AssetPartition, MaterializationId, RunId, StepId, WorkerId};
use jiff::Timestamp;
use serde_json::json;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row};

use crate::SqliteStore;
use crate::codec::{self, DbResult, micros};

/// Steps inserted per statement by `create_run`, to bound the JSON parameter.
const INSERT_CHUNK: usize = 4096;

/// The steps a claim of `?4` items may take when no limit concerns it: of a
/// `running` run without a cap, of the served queues (`?5`, a JSON array, or
/// NULL for all) but not of a limited one (`?6`, a JSON array). The run
/// filter (`?7`) is spliced in.
macro_rules! unlimited_ready {
    ($state:literal, $run_filter:literal) => {
        concat!(
            "SELECT id, priority, scheduled_at FROM steps \
             WHERE ",
            $state,
            " AND run_id IN ( \
                   SELECT id FROM runs WHERE state = 'running' AND max_parallel IS NULL) \
               AND (?5 IS NULL OR queue IN (SELECT value FROM json_each(?5))) \
               AND queue NOT IN (SELECT value FROM json_each(?6)) ",
            $run_filter,
            " ORDER BY priority DESC, scheduled_at, id LIMIT ?4"
        )
    };
}

/// The claim's update, shared by both unlimited claims: the first ready
/// steps (available, or retryable and due at `?2`) become `running` under
/// `?1` until `?3`, and come back with their runs' trigger and user.
macro_rules! claim_sql {
    ($run_filter:literal) => {
        concat!(
            "UPDATE steps \
             SET state = 'running', attempt = attempt + 1, worker = ?1, started_at = ?2, \
                 lease_until = ?3, finished_at = NULL \
             WHERE id IN ( \
                 SELECT id FROM ( \
                     SELECT * FROM (",
            unlimited_ready!("state = 'available'", $run_filter),
            ") UNION ALL SELECT * FROM (",
            unlimited_ready!("state = 'retryable' AND scheduled_at <= ?2", $run_filter),
            ")) ORDER BY priority DESC, scheduled_at, id LIMIT ?4) \
             RETURNING ",
            claim_returning!()
        )
    };
}

/// What a claim returns of each step it took.
macro_rules! claim_returning {
    () => {
        "id, run_id, asset_key, partition_key, attempt, max_attempts, priority, \
         scheduled_at, \
         (SELECT triggered_by FROM runs WHERE runs.id = steps.run_id) AS triggered_by, \
         (SELECT user_name FROM runs WHERE runs.id = steps.run_id) AS user_name"
    };
}

/// Claims from every `running` run (an interrupted run is paused for every
/// worker until it is resumed).
const CLAIM_ANY: &str = claim_sql!("");

/// Claims from one run (`?7`).
const CLAIM_RUN: &str = claim_sql!("AND run_id = ?7");

/// Whether there is limited work about: a capped running run, or steps of a
/// limited queue (`?1`, a JSON array) running or waiting.
const LIMITED_WORK: &str = "SELECT EXISTS (SELECT 1 FROM runs \
         WHERE state = 'running' AND max_parallel IS NOT NULL) \
     OR EXISTS (SELECT 1 FROM steps WHERE queue IN (SELECT value FROM json_each(?1)) \
         AND state IN ('running', 'available', 'retryable'))";

/// The free slots of the limited queues (`?1`, a JSON object of limits) and
/// of the capped running runs (only `?2` when given), with whether the queue
/// has steps running or waiting.
const FREE_SLOTS: &str = "SELECT l.key AS queue, NULL AS run, \
         l.value - (SELECT count(*) FROM steps s \
                    WHERE s.state = 'running' AND s.queue = l.key) AS free, \
         EXISTS (SELECT 1 FROM steps s WHERE s.queue = l.key \
                 AND s.state IN ('running', 'available', 'retryable')) AS busy \
     FROM json_each(?1) AS l \
     UNION ALL \
     SELECT NULL, r.id, \
         r.max_parallel - (SELECT count(*) FROM steps s \
                           WHERE s.run_id = r.id AND s.state = 'running'), \
         1 \
     FROM runs AS r \
     WHERE r.state = 'running' AND r.max_parallel IS NOT NULL \
       AND (?2 IS NULL OR r.id = ?2)";

/// Ready steps at `?1` in claim order for a limited claim, leaving out full
/// queues (`?4`) and runs (`?5`) and steps already chosen (`?6`), all JSON
/// arrays.
const CANDIDATES: &str = "SELECT id, queue, run_id FROM steps \
     WHERE (state = 'available' OR (state = 'retryable' AND scheduled_at <= ?1)) \
       AND run_id IN (SELECT id FROM runs WHERE state = 'running') \
       AND (?2 IS NULL OR run_id = ?2) \
       AND (?3 IS NULL OR queue IN (SELECT value FROM json_each(?3))) \
       AND queue NOT IN (SELECT value FROM json_each(?4)) \
       AND run_id NOT IN (SELECT value FROM json_each(?5)) \
       AND id NOT IN (SELECT value FROM json_each(?6)) \
     ORDER BY priority DESC, scheduled_at, id \
     LIMIT ?7";

/// Takes the chosen steps (`?4`, a JSON array of ids).
const TAKE: &str = concat!(
    "UPDATE steps \
     SET state = 'running', attempt = attempt + 1, worker = ?1, started_at = ?2, \
         lease_until = ?3, finished_at = NULL \
     WHERE id IN (SELECT value FROM json_each(?4)) \
     RETURNING ",
    claim_returning!()
);

/// Moves running steps to completed, checking attempt and worker; items are
/// `[step, attempt, worker, finished_at]`. Returns the claims that moved.
const FENCE_COMPLETE: &str = "UPDATE steps \
     SET state = 'completed', finished_at = j.value ->> 3, lease_until = NULL, error = NULL \
     FROM jsonb_each(?1) AS j \
     WHERE steps.id = j.value ->> 0 AND +steps.state = 'running' \
       AND steps.attempt = j.value ->> 1 AND steps.worker = j.value ->> 2 \
     RETURNING steps.id, steps.attempt, steps.worker";

/// Items are `[step, asset, partition, run, attempt, started_at, finished_at,
/// trigger, user, code_version, data_version, metadata, location, io_manager]`.
const INSERT_MATERIALIZATIONS: &str = "INSERT INTO materializations \
     (step_id, asset_key, partition_key, run_id, attempt, started_at, finished_at, \
      triggered_by, user_name, code_version, data_version, metadata, location, io_manager) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
            value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value -> 11, \
            value ->> 12, value ->> 13 \
     FROM jsonb_each(?1) ORDER BY key \
     RETURNING id, step_id";

/// Items are `[consumer, input]`.
const INSERT_LINEAGE: &str = "INSERT INTO lineage (consumer_id, input_id) \
     SELECT value ->> 0, value ->> 1 FROM jsonb_each(?1) WHERE true \
     ON CONFLICT DO NOTHING";

/// Counts the completion of the steps in `?1` against their downstream steps;
/// a pending step with nothing left to wait for becomes available.
const RELEASE_DOWNSTREAM: &str = "UPDATE steps \
     SET upstream_remaining = steps.upstream_remaining - d.n, \
         state = CASE WHEN steps.state = 'pending' AND steps.upstream_remaining - d.n <= 0 \
                      THEN 'available' ELSE steps.state END \
     FROM (SELECT downstream_id, count(*) AS n FROM step_deps \
           WHERE upstream_id IN (SELECT value FROM jsonb_each(?1)) \
           GROUP BY downstream_id) AS d \
     WHERE steps.id = d.downstream_id";

/// Moves running steps to retryable (with a retry time) or failed; items are
/// `[step, attempt, worker, error, retry_at or null, finished_at]`.
const FENCE_FAIL: &str = "UPDATE steps \
     SET state = CASE WHEN j.value ->> 4 IS NULL THEN 'failed' ELSE 'retryable' END, \
         scheduled_at = coalesce(j.value ->> 4, steps.scheduled_at), \
         error = j.value ->> 3, finished_at = j.value ->> 5, lease_until = NULL \
     FROM jsonb_each(?1) AS j \
     WHERE steps.id = j.value ->> 0 AND +steps.state = 'running' \
       AND steps.attempt = j.value ->> 1 AND steps.worker = j.value ->> 2 \
     RETURNING steps.id, steps.attempt, steps.worker, steps.state, steps.asset_key, \
         steps.partition_key";

/// Skips every pending step downstream of the failed steps in `?1` (items are
/// `[step, cause]`), transitively; the walk stops at steps that are not
/// pending, whose own downstream steps were dealt with when they left pending.
const SKIP_DOWNSTREAM: &str = "WITH RECURSIVE down (id, cause) AS ( \
         SELECT d.downstream_id, r.value ->> 1 \
         FROM jsonb_each(?1) AS r \
         JOIN step_deps AS d ON d.upstream_id = r.value ->> 0 \
         JOIN steps AS s ON s.id = d.downstream_id AND +s.state = 'pending' \
         UNION \
         SELECT d.downstream_id, down.cause \
         FROM down \
         JOIN step_deps AS d ON d.upstream_id = down.id \
         JOIN steps AS s ON s.id = d.downstream_id AND +s.state = 'pending') \
     UPDATE steps SET state = 'skipped', error = c.cause, finished_at = ?2 \
     FROM (SELECT id, min(cause) AS cause FROM down GROUP BY id) AS c \
     WHERE steps.id = c.id AND steps.state = 'pending' \
     RETURNING steps.id, steps.run_id, steps.error";

// Every write below takes the writer's mutex, then opens `BEGIN IMMEDIATE` so
// that the transaction holds SQLite's write lock from its first statement and
// cannot fail half-way for want of it.
impl SqliteStore {
    pub(crate) async fn write_create_run(&self, run: NewRun) -> StoreResult<RunRecord> {
        // Check the step graph before touching the database.
        let upstream = run.checked_upstream()?;

        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;

        sqlx::query(
            "INSERT INTO runs (id, state, triggered_by, user_name, description, created_at, \
                 max_parallel) \
             VALUES (?1, 'running', ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(run.id.to_string())
        .bind(run.trigger.as_str())
        .bind(run.user.clone())
        .bind(run.description.clone())
        .bind(micros(run.created_at))
        .bind(run.max_parallel.map(i64::from))
        .execute(&mut *tx)
        .await
        .db()?;

        // Ids are given, not left to SQLite, so that the dependency edges can
        // name them: the write lock makes `max(id)` stable until commit.
        let base: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM steps")
            .fetch_one(&mut *tx)
            .await
            .db()?;
        let step_id = |i: usize| base + 1 + i as i64;

        for (chunk_index, chunk) in run.steps.chunks(INSERT_CHUNK).enumerate() {
            let first = chunk_index * INSERT_CHUNK;
            let items: Vec<serde_json::Value> = chunk
                .iter()
                .enumerate()
                .map(|(offset, step)| {
                    let i = first + offset;
                    let waits = upstream[i].len();
                    let state = if waits == 0 {
                        StepState::Available
                    } else {
                        StepState::Pending
                    };
                    json!([
                        step_id(i),
                        step.target.asset.as_str(),
                        step.target.partition.as_ref().map(|p| p.as_str()),
                        state.as_str(),
                        step.max_attempts,
                        step.priority,
                        waits,
                        step.queue,
                    ])
                })
                .collect();
            let inserted = sqlx::query(
                "INSERT INTO steps (id, run_id, asset_key, partition_key, state, attempt, \
                     max_attempts, priority, scheduled_at, upstream_remaining, queue) \
                 SELECT value ->> 0, ?1, value ->> 1, value ->> 2, value ->> 3, 0, \
                     value ->> 4, value ->> 5, ?2, value ->> 6, value ->> 7 \
                 FROM jsonb_each(?3)",
            )
            .bind(run.id.to_string())
            .bind(micros(run.created_at))
            .bind(serde_json::Value::Array(items).to_string())
            .execute(&mut *tx)
            .await;
            if let Err(err) = inserted {
                if !is_live_conflict(&err) {
                    return Err(StoreError::backend(err));
                }
                // Roll back, then name what is live elsewhere.
                drop(tx);
                let targets: Vec<AssetPartition> =
                    run.steps.iter().map(|s| s.target.clone()).collect();
                let live = crate::maintain::live_steps_in(&mut conn, &targets).await?;
                return Err(StoreError::live_conflict(&run, &live));
            }
        }

        let edges: Vec<serde_json::Value> = upstream
            .iter()
            .enumerate()
            .flat_map(|(down, ups)| {
                ups.iter()
                    .map(move |&up| json!([step_id(up), step_id(down)]))
            })
            .collect();
        for chunk in edges.chunks(INSERT_CHUNK) {
            sqlx::query(
                "INSERT INTO step_deps (upstream_id, downstream_id) \
                 SELECT value ->> 0, value ->> 1 FROM jsonb_each(?1)",
            )
            .bind(serde_json::Value::Array(chunk.to_vec()).to_string())
            .execute(&mut *tx)
            .await
            .db()?;
        }

        tx.commit().await.db()?;
        self.notify([run.id]);

        Ok(run.into_record(&upstream))
    }

    pub(crate) async fn write_claim(&self, req: ClaimRequest) -> StoreResult<Vec<ClaimedStep>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;
        let claimed = claim_in(&mut tx, &req, &self.limited_seen).await?;
        tx.commit().await.db()?;
        Ok(claimed)
    }

    pub(crate) async fn write_complete_and_claim(
        &self,
        batch: Vec<Completion>,
        next: ClaimRequest,
    ) -> StoreResult<(Vec<Outcome>, Vec<ClaimedStep>)> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;
        let outcomes = complete_in(&mut tx, &batch).await?;
        let claimed = if next.limit == 0 {
            Vec::new()
        } else {
            claim_in(&mut tx, &next, &self.limited_seen).await?
        };
        tx.commit().await.db()?;
        self.notify(batch.iter().map(|c| c.materialization.run_id));
        log_fenced("complete", &batch, &outcomes, |c| {
            (c.step, c.attempt, &c.worker)
        });
        Ok((outcomes, claimed))
    }

    pub(crate) async fn write_complete(&self, batch: Vec<Completion>) -> StoreResult<Vec<Outcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;
        let outcomes = complete_in(&mut tx, &batch).await?;
        tx.commit().await.db()?;
        self.notify(batch.iter().map(|c| c.materialization.run_id));
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
        let fence: Vec<serde_json::Value> = firsts
            .iter()
            .map(|&i| {
                let f = &batch[i];
                json!([
                    f.step.0,
                    f.attempt,
                    f.worker.0,
                    f.error,
                    f.retry_at.map(micros),
                    micros(f.finished_at),
                ])
            })
            .collect();
        let skipped_at = batch
            .iter()
            .map(|f| f.finished_at)
            .max()
            .unwrap_or_else(Timestamp::now);

        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;

        // Fence: only steps still running under this attempt and worker move.
        let rows = sqlx::query(FENCE_FAIL)
            .bind(serde_json::Value::Array(fence).to_string())
            .fetch_all(&mut *tx)
            .await
            .db()?;
        let mut moved = HashSet::new();
        let mut causes = Vec::new();
        for row in &rows {
            let id: i64 = row.try_get("id").db()?;
            moved.insert(claim_of(row)?);
            let state: String = row.try_get("state").db()?;
            if codec::step_state(&state)? == StepState::Failed {
                let target = codec::target(row)?;
                causes.push(json!([id, format!("upstream {target} failed")]));
            }
        }

        // Record: the callers' events for the items that moved.
        let mut events = Vec::new();
        for i in firsts {
            let f = &batch[i];
            if moved.contains(&(f.step.0, i64::from(f.attempt), f.worker.0.clone())) {
                outcomes[i] = Outcome::Recorded(None);
                events.extend(batch[i].events.iter().map(codec::event_json));
            }
        }

        // Skip: everything pending downstream of a final failure.
        events.extend(skip_downstream_in(&mut tx, causes, skipped_at).await?);
        insert_events_in(&mut tx, events).await?;

        tx.commit().await.db()?;
        self.notify(batch.iter().flat_map(|f| f.events.iter().map(|e| e.run_id)));
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

        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;

        let rows = sqlx::query(
            "UPDATE steps SET state = 'available', lease_until = NULL \
             WHERE state = 'running' AND worker IN (SELECT value FROM jsonb_each(?1)) \
               AND (?2 IS NULL OR run_id = ?2) \
             RETURNING id, run_id, worker, attempt",
        )
        .bind(serde_json::to_string(&workers).unwrap_or_default())
        .bind(run.map(|r| r.to_string()))
        .fetch_all(&mut *tx)
        .await
        .db()?;

        let released = record_released(&mut tx, rows, reason, now).await?;
        tx.commit().await.db()?;
        self.notify(released.iter().map(|(run, _)| *run));
        Ok(released.into_iter().map(|(_, step)| step).collect())
    }

    pub(crate) async fn write_release_unknown(
        &self,
        worker: &WorkerId,
        known: &[StepId],
        claimed_before: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Vec<StepId>> {
        let known: Vec<i64> = known.iter().map(|s| s.0).collect();
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;
        let rows = sqlx::query(
            "UPDATE steps SET state = 'available', lease_until = NULL \
             WHERE state = 'running' AND worker = ?1 \
               AND id NOT IN (SELECT value FROM json_each(?2)) AND started_at < ?3 \
             RETURNING id, run_id, worker, attempt",
        )
        .bind(worker.0.clone())
        .bind(json!(known).to_string())
        .bind(micros(claimed_before))
        .fetch_all(&mut *tx)
        .await
        .db()?;
        let reason = "handed back: claimed by a worker that never got the answer";
        let released = record_released(&mut tx, rows, reason, now).await?;
        tx.commit().await.db()?;
        self.notify(released.iter().map(|(run, _)| *run));
        Ok(released.into_iter().map(|(_, step)| step).collect())
    }

    pub(crate) async fn write_run_state(
        &self,
        run: RunId,
        from: &[RunState],
        to: RunState,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let finished_at = to.is_terminal().then(|| micros(now));

        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;
        let changed = sqlx::query(
            "UPDATE runs SET state = ?1, finished_at = ?2 \
             WHERE id = ?3 AND state IN (SELECT value FROM jsonb_each(?4))",
        )
        .bind(to.as_str())
        .bind(finished_at)
        .bind(run.to_string())
        .bind(serde_json::to_string(&from).unwrap_or_default())
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
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;

        let changed = sqlx::query(
            "UPDATE runs SET state = 'cancelled', finished_at = ?2 \
             WHERE id = ?1 AND state IN ('running', 'interrupted')",
        )
        .bind(run.to_string())
        .bind(micros(now))
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
            "UPDATE steps SET state = 'cancelled', finished_at = ?2 \
             WHERE run_id = ?1 AND state IN ('pending', 'available', 'retryable')",
        )
        .bind(run.to_string())
        .bind(micros(now))
        .execute(&mut *tx)
        .await
        .db()?;

        tx.commit().await.db()?;
        Ok(true)
    }

    pub(crate) async fn write_events(&self, events: Vec<NewEvent>) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let items: Vec<serde_json::Value> = events.iter().map(codec::event_json).collect();
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;
        insert_events_in(&mut tx, items).await?;
        tx.commit().await.db()?;
        self.notify(events.iter().map(|e| e.run_id));
        Ok(())
    }

    pub(crate) async fn write_register_worker(&self, worker: &WorkerRecord) -> StoreResult<()> {
        let mut conn = self.writer.lock().await;
        sqlx::query(
            "INSERT INTO workers (id, host, pid, started_at, heartbeat_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(worker.id.0.clone())
        .bind(worker.host.clone())
        .bind(i64::from(worker.pid))
        .bind(micros(worker.started_at))
        .bind(micros(worker.heartbeat_at))
        .execute(&mut *conn)
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
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;
        sqlx::query("UPDATE steps SET lease_until = ?2 WHERE state = 'running' AND worker = ?1")
            .bind(worker.0.clone())
            .bind(codec::micros_after(now, lease))
            .execute(&mut *tx)
            .await
            .db()?;
        let registered = sqlx::query("UPDATE workers SET heartbeat_at = ?2 WHERE id = ?1")
            .bind(worker.0.clone())
            .bind(micros(now))
            .execute(&mut *tx)
            .await
            .db()?
            .rows_affected();
        tx.commit().await.db()?;
        Ok(registered > 0)
    }

    pub(crate) async fn write_deregister_worker(&self, worker: &WorkerId) -> StoreResult<()> {
        let mut conn = self.writer.lock().await;
        sqlx::query("DELETE FROM workers WHERE id = ?1")
            .bind(worker.0.clone())
            .execute(&mut *conn)
            .await
            .db()?;
        Ok(())
    }
}

/// Records a `step_released` event for each row of a release (`id, run_id,
/// worker, attempt`); returns the released steps with their runs, sorted.
async fn record_released(
    conn: &mut SqliteConnection,
    rows: Vec<sqlx::sqlite::SqliteRow>,
    reason: &str,
    now: Timestamp,
) -> StoreResult<Vec<(RunId, StepId)>> {
    let mut released = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let id = StepId(row.try_get("id").db()?);
        let run: String = row.try_get("run_id").db()?;
        let run = codec::run_id("steps.run_id", &run)?;
        let worker: Option<String> = row.try_get("worker").db()?;
        let attempt: i64 = row.try_get("attempt").db()?;
        events.push(codec::event_json(&NewEvent {
            run_id: run,
            step_id: Some(id),
            at: now,
            kind: EventKind::StepReleased,
            level: Level::Warn,
            message: reason.to_owned(),
            data: json!({ "worker": worker, "attempt": attempt }),
        }));
        released.push((run, id));
    }
    insert_events_in(conn, events).await?;
    released.sort_by_key(|(_, step)| *step);
    Ok(released)
}

/// Skips, inside the caller's transaction, every pending step downstream of
/// the failed steps in `causes` (items `[step, cause]`); returns one
/// `step_skipped` event (as JSON for [`codec::INSERT_EVENTS`]) per skipped step.
pub(crate) async fn skip_downstream_in(
    conn: &mut SqliteConnection,
    causes: Vec<serde_json::Value>,
    at: Timestamp,
) -> StoreResult<Vec<serde_json::Value>> {
    if causes.is_empty() {
        return Ok(Vec::new());
    }
    let skipped = sqlx::query(SKIP_DOWNSTREAM)
        .bind(serde_json::Value::Array(causes).to_string())
        .bind(micros(at))
        .fetch_all(&mut *conn)
        .await
        .db()?;
    let mut events = Vec::with_capacity(skipped.len());
    for row in skipped {
        let run: String = row.try_get("run_id").db()?;
        let error: Option<String> = row.try_get("error").db()?;
        events.push(codec::event_json(&NewEvent {
            run_id: codec::run_id("steps.run_id", &run)?,
            step_id: Some(StepId(row.try_get("id").db()?)),
            at,
            kind: EventKind::StepSkipped,
            level: Level::Warn,
            message: error.unwrap_or_default(),
            data: serde_json::Value::Null,
        }));
    }
    Ok(events)
}

/// Inserts events (as JSON from [`codec::event_json`]), if any, inside the
/// caller's transaction.
pub(crate) async fn insert_events_in(
    conn: &mut SqliteConnection,
    events: Vec<serde_json::Value>,
) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query(codec::INSERT_EVENTS)
        .bind(serde_json::Value::Array(events).to_string())
        .execute(&mut *conn)
        .await
        .db()?;
    Ok(())
}

/// Whether `err` is the unique index on live steps refusing a second live
/// step for an asset partition.
fn is_live_conflict(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.message().contains("steps_live_target"))
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
fn claim_of(row: &sqlx::sqlite::SqliteRow) -> StoreResult<(i64, i64, String)> {
    Ok((
        row.try_get("id").db()?,
        row.try_get("attempt").db()?,
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
async fn ensure_run_exists(conn: &mut SqliteConnection, run: RunId) -> StoreResult<()> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM runs WHERE id = ?1")
        .bind(run.to_string())
        .fetch_optional(&mut *conn)
        .await
        .db()?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(format!("no run {run} in the store"))),
    }
}

/// Claims inside the caller's transaction; `req.limit` is not 0.
///
/// As on PostgreSQL: steps of limited queues and capped runs are taken by a
/// limited claim ([`flowstone_core::slots`]): first when the last claim of
/// this store saw limited work about, otherwise after the unlimited claim with
/// the slots it left over. The write lock serializes limited claims.
async fn claim_in(
    conn: &mut SqliteConnection,
    req: &ClaimRequest,
    limited_seen: &AtomicBool,
) -> StoreResult<Vec<ClaimedStep>> {
    let limited_queues = limited_queues(req);
    if limited_seen.load(Ordering::Relaxed) {
        return limited_claim(conn, req, req.limit, &limited_queues, limited_seen).await;
    }
    let mut claimed = unlimited_claim(conn, req, &limited_queues).await?;
    let left = req.limit - claimed.len() as u32;
    // A full claim that no limit can concern needs no second look.
    if left > 0 || !limited_queues.is_empty() {
        let names: Vec<&String> = limited_queues.keys().collect();
        let limited: bool = sqlx::query_scalar(LIMITED_WORK)
            .bind(json!(names).to_string())
            .fetch_one(&mut *conn)
            .await
            .db()?;
        limited_seen.store(limited, Ordering::Relaxed);
        if left > 0 && limited {
            claimed.extend(limited_claim(conn, req, left, &limited_queues, limited_seen).await?);
        }
    }
    Ok(claimed)
}

/// The limits of the queues `req` serves.
fn limited_queues(req: &ClaimRequest) -> serde_json::Map<String, serde_json::Value> {
    req.served_limits()
        .map(|(queue, limit)| (queue.to_owned(), json!(limit)))
        .collect()
}

/// One statement claiming the first ready steps that no limit concerns.
async fn unlimited_claim(
    conn: &mut SqliteConnection,
    req: &ClaimRequest,
    limited_queues: &serde_json::Map<String, serde_json::Value>,
) -> StoreResult<Vec<ClaimedStep>> {
    let limited: Vec<&String> = limited_queues.keys().collect();
    let query = match req.run {
        Some(_) => sqlx::query(CLAIM_RUN),
        None => sqlx::query(CLAIM_ANY),
    };
    let mut query = query
        .bind(req.worker.0.clone())
        .bind(micros(req.now))
        .bind(codec::micros_after(req.now, req.lease))
        .bind(i64::from(req.limit))
        .bind(req.queues.as_ref().map(|q| json!(q).to_string()))
        .bind(json!(limited).to_string());
    if let Some(run) = req.run {
        query = query.bind(run.to_string());
    }
    let rows = query.fetch_all(&mut *conn).await.db()?;
    in_claim_order(&rows)
}

/// Claims up to `limit` steps within the free slots of limited queues and
/// capped runs; records in `limited_seen` whether there is limited work about.
async fn limited_claim(
    conn: &mut SqliteConnection,
    req: &ClaimRequest,
    limit: u32,
    limited_queues: &serde_json::Map<String, serde_json::Value>,
    limited_seen: &AtomicBool,
) -> StoreResult<Vec<ClaimedStep>> {
    let rows = sqlx::query(FREE_SLOTS)
        .bind(serde_json::Value::Object(limited_queues.clone()).to_string())
        .bind(req.run.map(|r| r.to_string()))
        .fetch_all(&mut *conn)
        .await
        .db()?;
    let mut slots = Slots::default();
    let mut busy = false;
    for row in &rows {
        let free: i64 = row.try_get("free").db()?;
        busy |= row.try_get::<bool, _>("busy").db()?;
        match row.try_get::<Option<String>, _>("run").db()? {
            Some(run) => slots.run(codec::run_id("runs.id", &run)?, free),
            None => slots.queue(row.try_get::<String, _>("queue").db()?, free),
        }
    }
    limited_seen.store(busy, Ordering::Relaxed);

    let served = req.queues.as_ref().map(|q| json!(q).to_string());
    let run = req.run.map(|r| r.to_string());
    let mut chooser = Chooser::new(slots, limit);
    while let Some(round) = chooser.next_round() {
        let full_runs: Vec<String> = round.full_runs.iter().map(ToString::to_string).collect();
        let chosen: Vec<i64> = round.chosen.iter().map(|s| s.0).collect();
        let rows = sqlx::query(CANDIDATES)
            .bind(micros(req.now))
            .bind(run.clone())
            .bind(served.clone())
            .bind(json!(round.full_queues).to_string())
            .bind(json!(full_runs).to_string())
            .bind(json!(chosen).to_string())
            .bind(i64::from(round.want))
            .fetch_all(&mut *conn)
            .await
            .db()?;
        let ready = rows
            .iter()
            .map(|row| {
                let run: String = row.try_get("run_id").db()?;
                Ok(Candidate {
                    id: StepId(row.try_get("id").db()?),
                    queue: row.try_get("queue").db()?,
                    run: codec::run_id("steps.run_id", &run)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        chooser.offer(ready);
    }
    let chosen = chooser.into_chosen();
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = chosen.iter().map(|s| s.0).collect();
    let rows = sqlx::query(TAKE)
        .bind(req.worker.0.clone())
        .bind(micros(req.now))
        .bind(codec::micros_after(req.now, req.lease))
        .bind(json!(ids).to_string())
        .fetch_all(&mut *conn)
        .await
        .db()?;
    in_claim_order(&rows)
}

/// The steps of a claim's `RETURNING` rows, in claim order (`RETURNING` gives
/// none).
fn in_claim_order(rows: &[sqlx::sqlite::SqliteRow]) -> StoreResult<Vec<ClaimedStep>> {
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let run: String = row.try_get("run_id").db()?;
        let trigger: Option<String> = row.try_get("triggered_by").db()?;
        let trigger = trigger.ok_or_else(|| {
            StoreError::Corrupt(format!("a step of run {run}, which has no runs row"))
        })?;
        let order: (i64, i64, i64) = (
            row.try_get("priority").db()?,
            row.try_get("scheduled_at").db()?,
            row.try_get("id").db()?,
        );
        let step = ClaimedStep {
            id: StepId(order.2),
            run_id: codec::run_id("steps.run_id", &run)?,
            target: codec::target(row)?,
            attempt: codec::count("steps.attempt", row.try_get("attempt").db()?)?,
            max_attempts: codec::count("steps.max_attempts", row.try_get("max_attempts").db()?)?,
            trigger: trigger.parse()?,
            user: row
                .try_get::<Option<String>, _>("user_name")
                .db()?
                .unwrap_or_default(),
        };
        claimed.push((order, step));
    }
    claimed.sort_by_key(|((priority, at, id), _)| (-priority, *at, *id));
    Ok(claimed.into_iter().map(|(_, step)| step).collect())
}

/// Records completions inside the caller's transaction; see
/// [`Store::complete`](flowstone_core::Store::complete).
async fn complete_in(
    conn: &mut SqliteConnection,
    batch: &[Completion],
) -> StoreResult<Vec<Outcome>> {
    let mut outcomes = vec![Outcome::Fenced; batch.len()];
    if batch.is_empty() {
        return Ok(outcomes);
    }
    // The same claim named twice in one batch completes once: the first
    // item wins, the repeat is fenced as it would be in a later batch.
    let firsts = first_per_claim(batch.iter().map(|c| (c.step, c.attempt, &c.worker)));

    let fence: Vec<serde_json::Value> = firsts
        .iter()
        .map(|&i| {
            let c = &batch[i];
            json!([
                c.step.0,
                c.attempt,
                c.worker.0,
                micros(c.materialization.finished_at)
            ])
        })
        .collect();

    // Fence: only steps still running under this attempt and worker move.
    let rows = sqlx::query(FENCE_COMPLETE)
        .bind(serde_json::Value::Array(fence).to_string())
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
    let materializations: Vec<serde_json::Value> = recorded
        .iter()
        .map(|&i| {
            let c = &batch[i];
            let m = &c.materialization;
            json!([
                c.step.0,
                m.target.asset.as_str(),
                m.target.partition.as_ref().map(|p| p.as_str()),
                m.run_id.to_string(),
                c.attempt,
                micros(m.started_at),
                micros(m.finished_at),
                m.trigger.as_str(),
                m.user,
                m.code_version,
                m.data_version,
                m.metadata,
                m.location,
                m.io_manager,
            ])
        })
        .collect();
    let ids: HashMap<i64, i64> = sqlx::query(INSERT_MATERIALIZATIONS)
        .bind(serde_json::Value::Array(materializations).to_string())
        .fetch_all(&mut *conn)
        .await
        .db()?
        .into_iter()
        .map(|row| Ok((row.try_get("step_id").db()?, row.try_get("id").db()?)))
        .collect::<StoreResult<_>>()?;

    let mut lineage = Vec::new();
    let mut events = Vec::new();
    for &i in &recorded {
        let c = &batch[i];
        let id = *ids.get(&c.step.0).ok_or_else(|| {
            StoreError::Corrupt(format!("no materialization came back for step {}", c.step))
        })?;
        outcomes[i] = Outcome::Recorded(Some(MaterializationId(id)));
        lineage.extend(c.inputs.iter().map(|input| json!([id, input.0])));
        events.extend(c.events.iter().map(codec::event_json));
        events.push(codec::event_json(&materialized_event(c, id)));
    }
    if !lineage.is_empty() {
        sqlx::query(INSERT_LINEAGE)
            .bind(serde_json::Value::Array(lineage).to_string())
            .execute(&mut *conn)
            .await
            .db()?;
    }
    sqlx::query(codec::INSERT_EVENTS)
        .bind(serde_json::Value::Array(events).to_string())
        .execute(&mut *conn)
        .await
        .db()?;

    // Release: downstream steps count these completions.
    let done: Vec<i64> = recorded.iter().map(|&i| batch[i].step.0).collect();
    sqlx::query(RELEASE_DOWNSTREAM)
        .bind(serde_json::to_string(&done).unwrap_or_default())
        .execute(&mut *conn)
        .await
        .db()?;

    Ok(outcomes)
}
