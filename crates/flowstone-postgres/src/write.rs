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

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use flowstone_core::slots::{Candidate, Chooser, Slots};
use flowstone_core::store::{
    ClaimRequest, ClaimedStep, Completion, EventKind, Failure, Level, NewEvent, NewRun, Outcome,
    RunRecord, RunState, StepState, StoreError, StoreResult, WorkerRecord,
};
use flowstone_core::{AssetPartition, MaterializationId, RunId, StepId, WorkerId};
use jiff::Timestamp;
use serde_json::json;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Row};
use uuid::Uuid;

use crate::PostgresStore;
use crate::codec::{self, DbResult, PgTime};

/// The unlimited claim, shared by the claim statements: the first ready
/// steps (of the served queues, but not of a limited queue: `$filter`) of
/// running runs without a cap become `running` under `$1` with a lease on
/// the database clock, and come back with their runs' trigger and user.
/// Every row also carries whether there is limited work about (a capped
/// running run, or `$limited`: steps of a limited queue running or
/// waiting), with one row of NULL steps when nothing was claimed.
///
/// The run's state is checked per step by a subquery, not by a join: with
/// a join, and without fresh statistics (a backfill of 10,000 steps just
/// queued), the generic plan read every ready step of the run and sorted
/// them (4 to 10 ms a claim) instead of reading `steps_ready` in order up
/// to the limit (0.2 to 0.5 ms). The queue conditions spoil that plan too,
/// so workers that serve every queue while no queue is limited, the usual
/// case, use statements without them.
macro_rules! claim_sql {
    ($filter:literal, $limited:literal) => {
        concat!(
            "WITH picked AS ( \
                 SELECT id FROM steps \
                 WHERE state IN ('available', 'retryable') \
                   AND (state = 'available' OR scheduled_at <= now()) \
                   AND (SELECT r.state = 'running' AND r.max_parallel IS NULL \
                        FROM runs AS r WHERE r.id = steps.run_id) ",
            $filter,
            "    ORDER BY priority DESC, scheduled_at, id \
                 LIMIT $4 \
                 FOR UPDATE SKIP LOCKED), \
             claimed AS ( \
                 UPDATE steps AS s \
                 SET state = 'running', attempt = s.attempt + 1, worker = $1, started_at = $2, \
                     lease_until = now() + $3 * interval '1 microsecond', finished_at = NULL \
                 FROM picked, runs AS r \
                 WHERE s.id = picked.id AND r.id = s.run_id \
                 RETURNING s.id, s.run_id, s.asset_key, s.partition_key, s.attempt, \
                     s.max_attempts, s.priority, s.scheduled_at, r.triggered_by, r.user_name) \
             SELECT c.*, \
                 EXISTS (SELECT 1 FROM runs \
                         WHERE state = 'running' AND max_parallel IS NOT NULL)",
            $limited,
            " AS limited \
             FROM (VALUES (1)) AS one (x) LEFT JOIN claimed AS c ON true"
        )
    };
}

/// Claims from every `running` run (an interrupted run is paused for every
/// worker until it is resumed), of the served queues (`$5`, NULL for all)
/// but not of the limited ones (`$6`).
const CLAIM_ANY: &str = claim_sql!(
    "AND ($5::text[] IS NULL OR queue = ANY($5)) AND queue <> ALL($6::text[]) ",
    " OR EXISTS (SELECT 1 FROM steps WHERE queue = ANY($6) \
         AND state IN ('running', 'available', 'retryable'))"
);

/// [`CLAIM_ANY`] from one run (`$7`).
const CLAIM_RUN: &str = claim_sql!(
    "AND ($5::text[] IS NULL OR queue = ANY($5)) AND queue <> ALL($6::text[]) \
     AND run_id = $7 ",
    " OR EXISTS (SELECT 1 FROM steps WHERE queue = ANY($6) \
         AND state IN ('running', 'available', 'retryable'))"
);

/// [`CLAIM_ANY`] for a worker serving every queue while none is limited.
const CLAIM_ANY_ALL_QUEUES: &str = claim_sql!("", "");

/// [`CLAIM_RUN`] for a worker serving every queue while none is limited;
/// the run is `$5`.
const CLAIM_RUN_ALL_QUEUES: &str = claim_sql!("AND run_id = $5 ", "");

/// Serializes the claims that involve a limit (a transaction-level advisory
/// lock, released at commit): each counts the free slots and takes at most
/// those, so two claimers never both take the last slot.
const LOCK_LIMITS: &str = "SELECT pg_advisory_xact_lock(7379463210871224693)";

/// The free slots of the limited queues (`$1` names, `$2` limits) and of the
/// capped running runs (only `$3` when given), with whether the queue has
/// steps running or waiting.
const FREE_SLOTS: &str = "SELECT l.q AS queue, NULL::uuid AS run, \
         l.cap - (SELECT count(*) FROM steps s \
                  WHERE s.state = 'running' AND s.queue = l.q) AS free, \
         EXISTS (SELECT 1 FROM steps s WHERE s.queue = l.q \
                 AND s.state IN ('running', 'available', 'retryable')) AS busy \
     FROM unnest($1::text[], $2::int8[]) AS l (q, cap) \
     UNION ALL \
     SELECT NULL, r.id, \
         r.max_parallel - (SELECT count(*) FROM steps s \
                           WHERE s.run_id = r.id AND s.state = 'running'), \
         true \
     FROM runs AS r \
     WHERE r.state = 'running' AND r.max_parallel IS NOT NULL \
       AND ($3::uuid IS NULL OR r.id = $3)";

/// Ready steps in claim order for a limited claim, locked, leaving out full
/// queues (`$3`) and runs (`$4`) and steps already chosen (`$5`).
const CANDIDATES: &str = "SELECT id, queue, run_id FROM steps \
     WHERE state IN ('available', 'retryable') \
       AND (state = 'available' OR scheduled_at <= now()) \
       AND run_id IN (SELECT id FROM runs WHERE state = 'running') \
       AND ($1::uuid IS NULL OR run_id = $1) \
       AND ($2::text[] IS NULL OR queue = ANY($2)) \
       AND queue <> ALL($3::text[]) \
       AND run_id <> ALL($4::uuid[]) \
       AND id <> ALL($5::int8[]) \
     ORDER BY priority DESC, scheduled_at, id \
     LIMIT $6 \
     FOR UPDATE SKIP LOCKED";

/// Takes the chosen steps (`$4`, locked by this transaction).
const TAKE: &str = "UPDATE steps AS s \
     SET state = 'running', attempt = s.attempt + 1, worker = $1, started_at = $2, \
         lease_until = now() + $3 * interval '1 microsecond', finished_at = NULL \
     FROM runs AS r \
     WHERE s.id = ANY($4) AND r.id = s.run_id \
     RETURNING s.id, s.run_id, s.asset_key, s.partition_key, s.attempt, \
         s.max_attempts, s.priority, s.scheduled_at, r.triggered_by, r.user_name";

/// Records a batch of completions in one statement: the fence, the
/// materializations, their lineage edges, the events, the release of
/// downstream steps. One statement rather than one per part, because on a
/// busy machine each round trip costs more than the work it carries.
///
/// - `b`: the batch items, one per array element (`$1`-`$16`), `ord` their
///   position.
/// - `fenced`: running steps move to completed, checking attempt and worker
///   (an id named twice, with another attempt or worker, matches at most
///   once). Locks the batch's steps in id order first, found by primary key:
///   an `IN (subquery)` here let the planner scan the whole table. The state,
///   attempt and worker checked are those of the locked rows (the latest
///   versions, which nothing else can change until this transaction ends),
///   so that the update finds its rows by primary key alone: checked on the
///   updated table, they let the generic plan look up each item through
///   `steps_running_by_worker`, reading every running step of the worker
///   per item (a batch of 128 took 50 ms on a busy database).
/// - `m`, `mo`: a materialization per item that moved, in batch order.
/// - lineage edges `(item, input)` (`$17`, `$18`) and the items' own events
///   (`$19`-`$26`, each with its item) of the items that moved, then each
///   item's `materialized` event naming its materialization; event ids
///   follow item order, and within an item the order given.
/// - `released`: downstream steps count these completions; a pending step
///   with nothing left to wait for becomes available, and its run is
///   notified (idle workers wake when the transaction commits). Locks the
///   downstream steps in id order first, as every batch does.
///
/// Returns, per item that moved, its position and its materialization id.
/// Data-modifying CTEs all run to completion whether read or not; the
/// notices are read by the final select so that they are sent.
const COMPLETE: &str = "WITH b AS ( \
         SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::timestamptz[], \
             $5::text[], $6::text[], $7::uuid[], $8::timestamptz[], $9::text[], $10::text[], \
             $11::text[], $12::text[], $13::jsonb[], $14::text[], $15::text[], $16::text[]) \
         WITH ORDINALITY AS b (id, attempt, worker, finished_at, asset_key, partition_key, \
             run_id, started_at, triggered_by, user_name, code_version, data_version, \
             metadata, location, io_manager, message, ord)), \
     locked AS ( \
         SELECT id, state, attempt, worker FROM steps WHERE id = ANY($1) \
         ORDER BY id FOR UPDATE), \
     fenced AS ( \
         UPDATE steps AS s \
         SET state = 'completed', finished_at = b.finished_at, lease_until = NULL, \
             error = NULL \
         FROM locked, b \
         WHERE s.id = locked.id AND b.id = locked.id AND locked.state = 'running' \
           AND locked.attempt = b.attempt AND locked.worker = b.worker \
         RETURNING s.id, b.ord), \
     m AS ( \
         INSERT INTO materializations (step_id, asset_key, partition_key, run_id, attempt, \
             started_at, finished_at, triggered_by, user_name, code_version, data_version, \
             metadata, location, io_manager) \
         SELECT b.id, b.asset_key, b.partition_key, b.run_id, b.attempt, b.started_at, \
             b.finished_at, b.triggered_by, b.user_name, b.code_version, b.data_version, \
             b.metadata, b.location, b.io_manager \
         FROM b JOIN fenced ON fenced.ord = b.ord \
         ORDER BY b.ord \
         RETURNING id, step_id), \
     mo AS ( \
         SELECT m.id AS mid, b.* FROM m \
         JOIN fenced ON fenced.id = m.step_id JOIN b ON b.ord = fenced.ord), \
     lineage_edges AS ( \
         INSERT INTO lineage (consumer_id, input_id) \
         SELECT mo.mid, l.input FROM unnest($17::int8[], $18::int8[]) AS l (item, input) \
         JOIN mo ON mo.ord = l.item \
         ON CONFLICT DO NOTHING), \
     logged AS ( \
         INSERT INTO events (run_id, step_id, at, kind, level, message, data) \
         SELECT run_id, step_id, at, kind, level, message, data FROM ( \
             SELECT e.item, e.sub, e.run_id, e.step_id, e.at, e.kind, e.level, e.message, \
                 e.data \
             FROM unnest($19::int8[], $20::uuid[], $21::int8[], $22::timestamptz[], \
                 $23::text[], $24::text[], $25::text[], $26::jsonb[]) \
                 WITH ORDINALITY AS e (item, run_id, step_id, at, kind, level, message, \
                     data, sub) \
             WHERE e.item IN (SELECT ord FROM mo) \
             UNION ALL \
             SELECT mo.ord, 9223372036854775807, mo.run_id, mo.id, mo.finished_at, \
                 'materialized', 'info', mo.message, \
                 jsonb_build_object('materialization_id', mo.mid, 'asset', mo.asset_key, \
                     'partition', mo.partition_key, 'attempt', mo.attempt) \
             FROM mo) AS x \
         ORDER BY item, sub), \
     d AS ( \
         SELECT downstream_id AS id, count(*)::int4 AS n FROM step_deps \
         WHERE upstream_id = ANY(ARRAY(SELECT id FROM fenced)) GROUP BY downstream_id), \
     down_locked AS ( \
         SELECT id FROM steps WHERE id = ANY(ARRAY(SELECT id FROM d)) \
         ORDER BY id FOR UPDATE), \
     released AS ( \
         UPDATE steps AS s \
         SET upstream_remaining = s.upstream_remaining - d.n, \
             state = CASE WHEN s.state = 'pending' AND s.upstream_remaining - d.n <= 0 \
                          THEN 'available' ELSE s.state END \
         FROM down_locked, d \
         WHERE s.id = down_locked.id AND d.id = down_locked.id \
         RETURNING s.run_id, s.state), \
     notified AS ( \
         SELECT count(pg_notify('flowstone', run_id::text)) AS n \
         FROM (SELECT DISTINCT run_id FROM released WHERE state = 'available') AS r) \
     SELECT mo.ord, mo.mid, notified.n FROM mo, notified";

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

/// Moves the running steps of worker `$1` that are not in `$2` and were
/// claimed before `$3` back to available.
const RELEASE_UNKNOWN: &str = "WITH locked AS ( \
         SELECT id FROM steps \
         WHERE state = 'running' AND worker = $1 AND id <> ALL($2) AND started_at < $3 \
         ORDER BY id FOR UPDATE) \
     UPDATE steps AS s SET state = 'available', lease_until = NULL \
     FROM locked \
     WHERE s.id = locked.id AND s.state = 'running' \
     RETURNING s.id, s.run_id, s.worker, s.attempt";

/// Inserts events, one per array element, in array order, so that event ids
/// follow it.
const INSERT_EVENTS: &str = "INSERT INTO events (run_id, step_id, at, kind, level, message, data) \
     SELECT run_id, step_id, at, kind, level, message, data \
     FROM unnest($1::uuid[], $2::int8[], $3::timestamptz[], $4::text[], $5::text[], \
                 $6::text[], $7::jsonb[]) \
         WITH ORDINALITY AS e (run_id, step_id, at, kind, level, message, data, ord) \
     ORDER BY ord";

/// [`INSERT_EVENTS`], and a notice on the `flowstone` channel once per run,
/// which PostgreSQL delivers when the transaction commits. For changes that
/// make steps claimable (a release, a retry, a rescue) or end them (a final
/// failure): a transaction that notifies queues its notifications under a
/// database-wide lock at commit, so notifying transactions commit one at a
/// time, and the completions of busy workers must not.
const INSERT_EVENTS_NOTIFY: &str = "WITH inserted AS ( \
         INSERT INTO events (run_id, step_id, at, kind, level, message, data) \
         SELECT run_id, step_id, at, kind, level, message, data \
         FROM unnest($1::uuid[], $2::int8[], $3::timestamptz[], $4::text[], $5::text[], \
                     $6::text[], $7::jsonb[]) \
             WITH ORDINALITY AS e (run_id, step_id, at, kind, level, message, data, ord) \
         ORDER BY ord \
         RETURNING run_id) \
     SELECT pg_notify('flowstone', run_id::text) FROM (SELECT DISTINCT run_id FROM inserted) AS r";

/// The first key of the advisory locks that mark transactions writing
/// events (0x4653_0000); the upper bits of the id bound are added to it, the
/// lower 31 are the second key. See [`BEGIN_EVENTS`].
macro_rules! event_lock_class {
    () => {
        "1179844608"
    };
}
pub(crate) use event_lock_class;

/// Begins a transaction that will insert events, and in the same round trip
/// takes a shared advisory lock (held until the transaction ends) whose keys
/// encode `v`, the last id the events sequence handed out so far: every
/// event this transaction inserts gets an id above `v`.
///
/// Event ids come from a sequence at insert, and transactions commit in any
/// order, so a reader that saw event 12 cannot tell whether 11 is missing or
/// not committed yet. These locks tell it: readers (`read.rs`, `horizon`)
/// return only events up to the lowest `v` of the transactions still open,
/// and up to what the sequence had handed out before they looked, so an
/// event never commits below an id a reader has passed. Shared locks never
/// wait on each other, so writers do not queue behind one another.
const BEGIN_EVENTS: &str = concat!(
    "BEGIN; SELECT pg_advisory_xact_lock_shared((",
    event_lock_class!(),
    " + (v >> 31))::int4, (v & 2147483647)::int4) \
     FROM (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS v \
           FROM events_id_seq) AS s"
);

/// Begins a transaction that may insert events; see [`BEGIN_EVENTS`].
pub(crate) async fn begin_events(
    pool: &sqlx::PgPool,
) -> StoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
    pool.begin_with(BEGIN_EVENTS).await.db()
}

impl PostgresStore {
    pub(crate) async fn write_create_run(&self, run: NewRun) -> StoreResult<RunRecord> {
        // Check the step graph before touching the database.
        let upstream = run.checked_upstream()?;
        let n = upstream.len();

        let mut tx = self.pool.begin().await.db()?;
        sqlx::query(
            "INSERT INTO runs (id, state, triggered_by, user_name, description, created_at, \
                 max_parallel) \
             VALUES ($1, 'running', $2, $3, $4, $5, $6)",
        )
        .bind(run.id.0)
        .bind(run.trigger.as_str())
        .bind(codec::text(&run.user))
        .bind(codec::text(&run.description))
        .bind(PgTime(run.created_at))
        .bind(run.max_parallel.map(codec::max_attempts))
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
        let mut queues = Vec::with_capacity(n);
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
            queues.push(codec::text(&step.queue));
        }
        // The unique index on live steps refuses an asset partition that
        // another run holds live; the run is then not created at all.
        let inserted = sqlx::query(
            "INSERT INTO steps (id, run_id, asset_key, partition_key, state, max_attempts, \
                 priority, scheduled_at, upstream_remaining, queue) \
             SELECT t.id, $1, t.asset_key, t.partition_key, t.state, t.max_attempts, \
                 t.priority, $2, t.waits, t.queue \
             FROM unnest($3::int8[], $4::text[], $5::text[], $6::text[], $7::int4[], \
                         $8::int4[], $9::int4[], $10::text[]) \
                 AS t (id, asset_key, partition_key, state, max_attempts, priority, waits, queue)",
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
        .bind(&queues)
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

    /// A claim on its own, on a connection whose commits do not wait for
    /// the log flush (`synchronous_commit = off`). Safe because a claim
    /// writes nothing but the claimed steps' rows (state, attempt, worker,
    /// lease; the limited claim adds a transaction-level advisory lock), and
    /// PostgreSQL loses an unflushed commit only in a server crash, and then
    /// with every commit logged after it:
    ///
    /// - a claim lost that way leaves its steps as they were (ready, with
    ///   the attempt before), so they are claimed again; the worker that
    ///   ran them is fenced when it completes (the step is not `running`
    ///   under its attempt and worker, or the new claim is its own and the
    ///   step is recorded once), and events, materializations and worker
    ///   rows never depend on a claim alone;
    /// - whatever the worker writes next about the step (its completion or
    ///   failure, with their events and materializations) commits durably,
    ///   and a durable commit flushes the log up to its own record, so the
    ///   claim's record, logged before, is flushed first: a recorded
    ///   completion never outlives its claim.
    ///
    /// Claims made with a completion batch ([`Self::write_complete_and_claim`])
    /// commit durably with it.
    pub(crate) async fn write_claim(&self, req: ClaimRequest) -> StoreResult<Vec<ClaimedStep>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.claims.acquire().await.db()?;
        claim_in(&mut conn, &req, &self.limited_seen).await
    }

    pub(crate) async fn write_complete_and_claim(
        &self,
        batch: Vec<Completion>,
        next: ClaimRequest,
    ) -> StoreResult<(Vec<Outcome>, Vec<ClaimedStep>)> {
        let mut tx = begin_events(&self.pool).await?;
        let outcomes = complete_in(&mut tx, &batch).await?;
        // The claim sees the steps the batch released: they are this
        // transaction's own rows, so SKIP LOCKED does not skip them.
        let claimed = if next.limit == 0 {
            Vec::new()
        } else {
            claim_in(&mut tx, &next, &self.limited_seen).await?
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
        let mut tx = begin_events(&self.pool).await?;
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

        let mut tx = begin_events(&self.pool).await?;

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
        events.insert_notifying(&mut tx).await?;

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

        let mut tx = begin_events(&self.pool).await?;
        let rows = sqlx::query(RELEASE)
            .bind(&workers)
            .bind(run.map(|r| r.0))
            .fetch_all(&mut *tx)
            .await
            .db()?;

        let released = record_released(&mut tx, &rows, reason, now).await?;
        tx.commit().await.db()?;
        Ok(released)
    }

    pub(crate) async fn write_release_unknown(
        &self,
        worker: &WorkerId,
        known: &[StepId],
        claimed_before: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Vec<StepId>> {
        let known: Vec<i64> = known.iter().map(|s| s.0).collect();
        let mut tx = begin_events(&self.pool).await?;
        let rows = sqlx::query(RELEASE_UNKNOWN)
            .bind(worker.0.as_str())
            .bind(&known)
            .bind(PgTime(claimed_before))
            .fetch_all(&mut *tx)
            .await
            .db()?;
        let reason = "handed back: claimed by a worker that never got the answer";
        let released = record_released(&mut tx, &rows, reason, now).await?;
        tx.commit().await.db()?;
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

        // A run that changes state is notified: a resumed run has steps to
        // claim, and live views show the change.
        let mut tx = self.pool.begin().await.db()?;
        let changed = sqlx::query(
            "WITH changed AS ( \
                 UPDATE runs SET state = $1, finished_at = $2 \
                 WHERE id = $3 AND state = ANY($4) RETURNING id) \
             SELECT pg_notify('flowstone', id::text) FROM changed",
        )
        .bind(to.as_str())
        .bind(finished_at)
        .bind(run.0)
        .bind(&from)
        .fetch_all(&mut *tx)
        .await
        .db()?
        .len();
        if changed == 0 {
            ensure_run_exists(&mut tx, run).await?;
        }
        tx.commit().await.db()?;
        Ok(changed > 0)
    }

    pub(crate) async fn write_cancel_run(&self, run: RunId, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.db()?;

        let changed = sqlx::query(
            "WITH changed AS ( \
                 UPDATE runs SET state = 'cancelled', finished_at = $2 \
                 WHERE id = $1 AND state IN ('running', 'interrupted') RETURNING id) \
             SELECT pg_notify('flowstone', id::text) FROM changed",
        )
        .bind(run.0)
        .bind(PgTime(now))
        .fetch_all(&mut *tx)
        .await
        .db()?
        .len();
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
        if events.is_empty() {
            return Ok(());
        }
        let mut columns = EventColumns::default();
        for event in &events {
            columns.push(event);
        }
        let mut tx = begin_events(&self.pool).await?;
        columns.insert(&mut tx).await?;
        tx.commit().await.db()
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
        // heartbeat records the worker's. The steps are locked in id order,
        // as completions lock theirs: in any other order, a heartbeat and a
        // batch of the same worker could each wait for a step the other
        // holds (a deadlock, which PostgreSQL ends by failing one of them).
        let registered = sqlx::query(
            "WITH locked AS ( \
                 SELECT id FROM steps WHERE state = 'running' AND worker = $1 \
                 ORDER BY id FOR UPDATE), \
             leases AS ( \
                 UPDATE steps AS s SET lease_until = now() + $3 * interval '1 microsecond' \
                 FROM locked WHERE s.id = locked.id AND s.state = 'running' AND s.worker = $1) \
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
/// materializations, lineage, events, release of downstream steps, in one
/// statement ([`COMPLETE`]).
async fn complete_in(conn: &mut PgConnection, batch: &[Completion]) -> StoreResult<Vec<Outcome>> {
    let mut outcomes = vec![Outcome::Fenced; batch.len()];
    // The same claim named twice in one batch completes once: the first
    // item wins, the repeat is fenced as it would be in a later batch.
    let firsts = first_per_claim(batch.iter().map(|c| (c.step, c.attempt, &c.worker)));
    if firsts.is_empty() {
        return Ok(outcomes);
    }
    let mut items = ItemColumns::default();
    for (ord, &i) in (1_i64..).zip(&firsts) {
        items.push(ord, &batch[i]);
    }

    let rows = items
        .bind(sqlx::query(COMPLETE))
        .fetch_all(&mut *conn)
        .await
        .db()?;

    // Each row is an item that moved: its position (from 1) and the id of
    // the materialization recorded for it.
    for row in &rows {
        let ord: i64 = row.try_get("ord").db()?;
        let id: i64 = row.try_get("mid").db()?;
        let i = usize::try_from(ord - 1)
            .ok()
            .and_then(|k| firsts.get(k).copied())
            .ok_or_else(|| StoreError::Corrupt(format!("no batch item at position {ord}")))?;
        outcomes[i] = Outcome::Recorded(Some(MaterializationId(id)));
    }
    Ok(outcomes)
}

/// Claims on `conn`, in the caller's transaction if it has one; `req.limit`
/// is not 0. The unlimited claim is one statement (committed on its own
/// outside a transaction).
///
/// Steps of limited queues and capped runs are taken by a limited claim
/// (see [`flowstone_core::slots`]): first, in claim order with every other
/// step, when the last claim of this store saw limited work about; otherwise
/// after the unlimited claim, with the slots it left over, if that claim saw
/// some.
async fn claim_in(
    conn: &mut PgConnection,
    req: &ClaimRequest,
    limited_seen: &AtomicBool,
) -> StoreResult<Vec<ClaimedStep>> {
    let limited_queues = limited_queues(req);
    let mut claimed = Vec::new();
    let mut left = req.limit;
    if !limited_seen.load(Ordering::Relaxed) {
        let limited;
        (claimed, limited) = unlimited_claim(conn, req, &limited_queues).await?;
        limited_seen.store(limited, Ordering::Relaxed);
        left -= claimed.len() as u32;
        if left == 0 || !limited {
            return Ok(claimed);
        }
    }
    // The limited claim's lock lasts until commit: a transaction of its own,
    // or a savepoint of the caller's (whose commit then releases it).
    let mut tx = conn.begin().await.db()?;
    claimed.extend(limited_claim(&mut tx, req, left, &limited_queues, limited_seen).await?);
    tx.commit().await.db()?;
    Ok(claimed)
}

/// The limits of the queues `req` serves.
fn limited_queues(req: &ClaimRequest) -> Vec<(&str, i64)> {
    req.served_limits()
        .map(|(queue, limit)| (queue, i64::from(limit)))
        .collect()
}

/// One statement claiming the first ready steps that no limit concerns;
/// returns them and whether there is limited work about.
async fn unlimited_claim(
    conn: &mut PgConnection,
    req: &ClaimRequest,
    limited_queues: &[(&str, i64)],
) -> StoreResult<(Vec<ClaimedStep>, bool)> {
    let limited: Vec<&str> = limited_queues.iter().map(|(q, _)| *q).collect();
    let all_queues = req.queues.is_none() && limited.is_empty();
    let query = match (req.run, all_queues) {
        (Some(_), false) => sqlx::query(CLAIM_RUN),
        (None, false) => sqlx::query(CLAIM_ANY),
        (Some(_), true) => sqlx::query(CLAIM_RUN_ALL_QUEUES),
        (None, true) => sqlx::query(CLAIM_ANY_ALL_QUEUES),
    };
    let mut query = query
        .bind(codec::text(&req.worker.0).into_owned())
        .bind(PgTime(req.now))
        .bind(codec::lease_micros(req.lease))
        .bind(i64::from(req.limit));
    if !all_queues {
        query = query.bind(req.queues.as_deref()).bind(&limited);
    }
    if let Some(run) = req.run {
        query = query.bind(run.0);
    }
    let rows = query.fetch_all(&mut *conn).await.db()?;
    let limited = match rows.first() {
        Some(row) => row.try_get::<bool, _>("limited").db()?,
        None => false,
    };
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<Option<i64>, _>("id").db()?.is_some() {
            claimed.push(claimed_step(row)?);
        }
    }
    Ok((in_claim_order(claimed), limited))
}

/// Claims up to `limit` steps within the free slots of limited queues and
/// capped runs, serialized with every other limited claim; records in
/// `limited_seen` whether there is limited work about.
async fn limited_claim(
    conn: &mut PgConnection,
    req: &ClaimRequest,
    limit: u32,
    limited_queues: &[(&str, i64)],
    limited_seen: &AtomicBool,
) -> StoreResult<Vec<ClaimedStep>> {
    sqlx::query(LOCK_LIMITS).execute(&mut *conn).await.db()?;
    let names: Vec<&str> = limited_queues.iter().map(|(q, _)| *q).collect();
    let limits: Vec<i64> = limited_queues.iter().map(|(_, l)| *l).collect();
    let rows = sqlx::query(FREE_SLOTS)
        .bind(&names)
        .bind(&limits)
        .bind(req.run.map(|r| r.0))
        .fetch_all(&mut *conn)
        .await
        .db()?;
    let mut slots = Slots::default();
    let mut busy = false;
    for row in &rows {
        let free: i64 = row.try_get("free").db()?;
        busy |= row.try_get::<bool, _>("busy").db()?;
        match row.try_get::<Option<Uuid>, _>("run").db()? {
            Some(run) => slots.run(RunId(run), free),
            None => slots.queue(row.try_get::<String, _>("queue").db()?, free),
        }
    }
    limited_seen.store(busy, Ordering::Relaxed);

    let served = req.queues.as_deref();
    let mut chooser = Chooser::new(slots, limit);
    while let Some(round) = chooser.next_round() {
        let full_runs: Vec<Uuid> = round.full_runs.iter().map(|r| r.0).collect();
        let chosen: Vec<i64> = round.chosen.iter().map(|s| s.0).collect();
        let rows = sqlx::query(CANDIDATES)
            .bind(req.run.map(|r| r.0))
            .bind(served)
            .bind(&round.full_queues)
            .bind(&full_runs)
            .bind(&chosen)
            .bind(i64::from(round.want))
            .fetch_all(&mut *conn)
            .await
            .db()?;
        let ready = rows
            .iter()
            .map(|row| {
                Ok(Candidate {
                    id: StepId(row.try_get("id").db()?),
                    queue: row.try_get("queue").db()?,
                    run: codec::run_id(row, "run_id")?,
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
        .bind(codec::text(&req.worker.0).into_owned())
        .bind(PgTime(req.now))
        .bind(codec::lease_micros(req.lease))
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await
        .db()?;
    let claimed = rows.iter().map(claimed_step).collect::<StoreResult<_>>()?;
    Ok(in_claim_order(claimed))
}

/// A claimed step with its claim order, from a claim's `RETURNING` row.
fn claimed_step(row: &PgRow) -> StoreResult<((i32, Timestamp, i64), ClaimedStep)> {
    let order: (i32, Timestamp, i64) = (
        row.try_get("priority").db()?,
        codec::time(row, "scheduled_at")?,
        row.try_get("id").db()?,
    );
    let trigger: String = row.try_get("triggered_by").db()?;
    let step = ClaimedStep {
        id: StepId(order.2),
        run_id: codec::run_id(row, "run_id")?,
        target: codec::target(row)?,
        attempt: codec::count("steps.attempt", row.try_get("attempt").db()?)?,
        max_attempts: codec::count("steps.max_attempts", row.try_get("max_attempts").db()?)?,
        trigger: trigger.parse()?,
        user: row.try_get("user_name").db()?,
    };
    Ok((order, step))
}

/// `RETURNING` gives no order; the steps in claim order.
fn in_claim_order(mut claimed: Vec<((i32, Timestamp, i64), ClaimedStep)>) -> Vec<ClaimedStep> {
    claimed.sort_by_key(|((priority, at, id), _)| (-i64::from(*priority), *at, *id));
    claimed.into_iter().map(|(_, step)| step).collect()
}

/// Records a `step_released` event for each row of a release (`id, run_id,
/// worker, attempt`); returns the released steps, sorted.
async fn record_released(
    conn: &mut PgConnection,
    rows: &[PgRow],
    reason: &str,
    now: Timestamp,
) -> StoreResult<Vec<StepId>> {
    let mut released = Vec::with_capacity(rows.len());
    let mut events = EventColumns::default();
    for row in rows {
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
    events.insert_notifying(conn).await?;
    released.sort();
    Ok(released)
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
        self.insert_with(conn, INSERT_EVENTS).await
    }

    /// Inserts the events, if any, in the order pushed, and notifies their
    /// runs on commit; see [`INSERT_EVENTS_NOTIFY`] for when.
    pub(crate) async fn insert_notifying(self, conn: &mut PgConnection) -> StoreResult<()> {
        self.insert_with(conn, INSERT_EVENTS_NOTIFY).await
    }

    async fn insert_with(self, conn: &mut PgConnection, sql: &'static str) -> StoreResult<()> {
        if self.runs.is_empty() {
            return Ok(());
        }
        sqlx::query(sql)
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

/// The items of a completion batch as [`COMPLETE`] takes them, one array
/// per column: the claim, the materialization, the message of its
/// `materialized` event, its lineage inputs and its events, each of the last
/// two with the position of its item.
#[derive(Default)]
struct ItemColumns<'a> {
    ids: Vec<i64>,
    attempts: Vec<i64>,
    workers: Vec<&'a str>,
    finished: Vec<PgTime>,
    assets: Vec<&'a str>,
    partitions: Vec<Option<Cow<'a, str>>>,
    runs: Vec<Uuid>,
    started: Vec<PgTime>,
    triggers: Vec<&'static str>,
    users: Vec<Cow<'a, str>>,
    code_versions: Vec<Cow<'a, str>>,
    data_versions: Vec<Cow<'a, str>>,
    metadata: Vec<serde_json::Value>,
    locations: Vec<Cow<'a, str>>,
    io_managers: Vec<Cow<'a, str>>,
    messages: Vec<String>,
    input_items: Vec<i64>,
    inputs: Vec<i64>,
    event_items: Vec<i64>,
    events: EventColumns,
}

impl<'a> ItemColumns<'a> {
    fn push(&mut self, ord: i64, c: &'a Completion) {
        let m = &c.materialization;
        self.ids.push(c.step.0);
        self.attempts.push(i64::from(c.attempt));
        self.workers.push(&c.worker.0);
        self.finished.push(PgTime(m.finished_at));
        self.assets.push(m.target.asset.as_str());
        self.partitions
            .push(m.target.partition.as_ref().map(|p| codec::text(p.as_str())));
        self.runs.push(m.run_id.0);
        self.started.push(PgTime(m.started_at));
        self.triggers.push(m.trigger.as_str());
        self.users.push(codec::text(&m.user));
        self.code_versions.push(codec::text(&m.code_version));
        self.data_versions.push(codec::text(&m.data_version));
        self.metadata.push(codec::json_object(&m.metadata));
        self.locations.push(codec::text(&m.location));
        self.io_managers.push(codec::text(&m.io_manager));
        let message = format!("materialized {}", m.target);
        self.messages.push(codec::text(&message).into_owned());
        for input in &c.inputs {
            self.input_items.push(ord);
            self.inputs.push(input.0);
        }
        for event in &c.events {
            self.event_items.push(ord);
            self.events.push(event);
        }
    }

    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let e = &self.events;
        query
            .bind(&self.ids)
            .bind(&self.attempts)
            .bind(&self.workers)
            .bind(&self.finished)
            .bind(&self.assets)
            .bind(&self.partitions)
            .bind(&self.runs)
            .bind(&self.started)
            .bind(&self.triggers)
            .bind(&self.users)
            .bind(&self.code_versions)
            .bind(&self.data_versions)
            .bind(&self.metadata)
            .bind(&self.locations)
            .bind(&self.io_managers)
            .bind(&self.messages)
            .bind(&self.input_items)
            .bind(&self.inputs)
            .bind(&self.event_items)
            .bind(&e.runs)
            .bind(&e.steps)
            .bind(&e.at)
            .bind(&e.kinds)
            .bind(&e.levels)
            .bind(&e.messages)
            .bind(&e.data)
    }
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
