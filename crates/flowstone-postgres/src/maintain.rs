//! Leases and the leader's maintenance: rescue of expired claims, forgetting
//! silent workers, and the live-step lookups behind one-live-step-per-target.
//!
//! Every expiry is decided on the database clock (`now()`). Maintenance
//! writes are fenced by the leader's lease: the statement that changes steps
//! or workers runs only while the lease is held in its term, and it takes the
//! lease row's lock (`FOR SHARE`) so that a takeover waits for it to commit.

use flowstone_core::store::{Lease, Rescued, RescuedStep, StepState, StoreError, StoreResult};
use flowstone_core::{AssetKey, AssetPartition, RunId, StepId, WorkerId};
use jiff::Timestamp;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use crate::PostgresStore;
use crate::codec::{self, DbResult, PgTime};
use crate::write::{EventColumns, begin_events, skip_downstream_in};

/// Whether the lease `$1` is held by `$2` in term `$3`, locking its row
/// against a takeover until the transaction ends.
const HOLDS: &str = "SELECT 1 FROM leases \
     WHERE name = $1 AND holder = $2 AND term = $3 AND expires_at > now() FOR SHARE";

/// Running steps whose lease ran out go back to retryable (due now) or, on
/// their last attempt, to failed. Rows locked by a completion in flight are
/// skipped; the `state` and `lease_until` checks after the lock are the
/// compare-and-set, so a step completed or heartbeated meanwhile stays.
const RESCUE: &str = "WITH expired AS ( \
         SELECT id FROM steps WHERE state = 'running' AND lease_until < now() \
         ORDER BY id FOR UPDATE SKIP LOCKED) \
     UPDATE steps AS s \
     SET state = CASE WHEN s.attempt < s.max_attempts THEN 'retryable' ELSE 'failed' END, \
         scheduled_at = now(), lease_until = NULL, finished_at = $1, \
         error = 'worker ' || coalesce(s.worker, '?') \
             || ' stopped heartbeating; its claim expired' \
     FROM expired \
     WHERE s.id = expired.id AND s.state = 'running' AND s.lease_until < now() \
     RETURNING s.id, s.run_id, s.asset_key, s.partition_key, s.state, s.attempt, \
         s.max_attempts, s.worker, s.error";

impl PostgresStore {
    pub(crate) async fn write_acquire_lease(
        &self,
        name: &str,
        holder: &WorkerId,
        ttl: jiff::SignedDuration,
    ) -> StoreResult<Option<Lease>> {
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, term, expires_at) \
             VALUES ($1, $2, 1, now() + $3 * interval '1 microsecond') \
             ON CONFLICT (name) DO UPDATE SET \
                 term = CASE WHEN leases.holder = excluded.holder THEN leases.term \
                             ELSE leases.term + 1 END, \
                 holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= now() \
             RETURNING name, holder, term, expires_at",
        )
        .bind(codec::text(name).into_owned())
        .bind(codec::text(&holder.0).into_owned())
        .bind(codec::lease_micros(ttl))
        .fetch_optional(&self.pool)
        .await
        .db()?;
        row.as_ref().map(lease).transpose()
    }

    pub(crate) async fn write_release_lease(&self, held: &Lease) -> StoreResult<()> {
        // Expired, not deleted: the next holder's term follows this one.
        sqlx::query(
            "UPDATE leases SET expires_at = 'epoch' \
             WHERE name = $1 AND holder = $2 AND term = $3",
        )
        .bind(held.name.as_str())
        .bind(held.holder.0.as_str())
        .bind(term(held))
        .execute(&self.pool)
        .await
        .db()?;
        Ok(())
    }

    pub(crate) async fn read_lease(&self, name: &str) -> StoreResult<Option<Lease>> {
        let row = sqlx::query("SELECT name, holder, term, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .db()?;
        row.as_ref().map(lease).transpose()
    }

    pub(crate) async fn write_rescue_expired(
        &self,
        held: &Lease,
        now: Timestamp,
    ) -> StoreResult<Rescued> {
        let mut tx = begin_events(&self.pool).await?;
        if !holds(&mut tx, held).await? {
            return Ok(Rescued::default());
        }
        let rows = sqlx::query(RESCUE)
            .bind(PgTime(now))
            .fetch_all(&mut *tx)
            .await
            .db()?;

        let mut rescued = Rescued::default();
        let mut events = EventColumns::default();
        let (mut failed, mut causes) = (Vec::new(), Vec::new());
        for row in &rows {
            let step = rescued_step(row)?;
            if step.state == StepState::Failed {
                failed.push(step.id.0);
                causes.push(step.skip_cause());
                rescued.failed.push(step.id);
            } else {
                rescued.retried.push(step.id);
            }
            events.push(&step.event(now));
        }
        skip_downstream_in(&mut tx, &failed, &causes, now, &mut events).await?;
        events.insert_notifying(&mut tx).await?;
        tx.commit().await.db()?;
        rescued.retried.sort();
        rescued.failed.sort();
        Ok(rescued)
    }

    pub(crate) async fn write_forget_workers(
        &self,
        held: &Lease,
        before: Timestamp,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.db()?;
        if !holds(&mut tx, held).await? {
            return Ok(0);
        }
        // Heartbeats are recorded on the workers' clocks: compare against
        // the caller's `before`, not the database clock.
        let gone = sqlx::query("DELETE FROM workers WHERE heartbeat_at < $1")
            .bind(PgTime(before.min(now)))
            .execute(&mut *tx)
            .await
            .db()?
            .rows_affected();
        tx.commit().await.db()?;
        Ok(gone)
    }

    pub(crate) async fn write_prune_runs(
        &self,
        held: &Lease,
        before: Timestamp,
        limit: u32,
    ) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.db()?;
        if !holds(&mut tx, held).await? {
            return Ok(0);
        }
        // The runs, locked so that a concurrent pass skips them; their counts
        // kept on the run; then the rows of the queue go.
        let pruned: Vec<uuid::Uuid> = sqlx::query_scalar(
            "WITH picked AS ( \
                 SELECT id FROM runs \
                 WHERE pruned_counts IS NULL AND finished_at < $1 \
                   AND state IN ('succeeded', 'failed', 'cancelled') \
                 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
             counts AS ( \
                 SELECT p.id, jsonb_build_object( \
                     'pending', count(*) FILTER (WHERE s.state = 'pending'), \
                     'available', count(*) FILTER (WHERE s.state = 'available'), \
                     'running', count(*) FILTER (WHERE s.state = 'running'), \
                     'retryable', count(*) FILTER (WHERE s.state = 'retryable'), \
                     'completed', count(*) FILTER (WHERE s.state = 'completed'), \
                     'failed', count(*) FILTER (WHERE s.state = 'failed'), \
                     'skipped', count(*) FILTER (WHERE s.state = 'skipped'), \
                     'cancelled', count(*) FILTER (WHERE s.state = 'cancelled')) AS kept \
                 FROM picked AS p LEFT JOIN steps AS s ON s.run_id = p.id GROUP BY p.id) \
             UPDATE runs SET pruned_counts = counts.kept FROM counts \
             WHERE runs.id = counts.id RETURNING runs.id",
        )
        .bind(PgTime(before))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .db()?;
        if pruned.is_empty() {
            return Ok(0);
        }
        sqlx::query(
            "DELETE FROM step_deps WHERE downstream_id IN ( \
                 SELECT id FROM steps WHERE run_id = ANY($1)) \
             OR upstream_id IN (SELECT id FROM steps WHERE run_id = ANY($1))",
        )
        .bind(&pruned)
        .execute(&mut *tx)
        .await
        .db()?;
        sqlx::query(
            "DELETE FROM steps WHERE run_id = ANY($1) \
               AND state IN ('completed', 'skipped', 'cancelled')",
        )
        .bind(&pruned)
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()?;
        Ok(pruned.len() as u64)
    }

    pub(crate) async fn read_runs_without_live_steps(&self, limit: u32) -> StoreResult<Vec<RunId>> {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM runs AS r WHERE state = 'running' AND NOT EXISTS ( \
                 SELECT 1 FROM steps AS s WHERE s.run_id = r.id \
                   AND s.state IN ('pending', 'available', 'running', 'retryable')) \
             ORDER BY created_at, id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .db()?;
        Ok(ids.into_iter().map(RunId).collect())
    }

    pub(crate) async fn read_has_live_steps(&self, run: RunId) -> StoreResult<bool> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM steps WHERE run_id = $1 \
               AND state IN ('pending', 'available', 'running', 'retryable') LIMIT 1",
        )
        .bind(run.0)
        .fetch_optional(&self.pool)
        .await
        .db()?;
        Ok(found.is_some())
    }

    pub(crate) async fn read_live_assets(&self) -> StoreResult<Vec<AssetKey>> {
        // Through the partial unique index on live steps.
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT asset_key FROM steps \
             WHERE state IN ('pending', 'available', 'running', 'retryable') ORDER BY asset_key",
        )
        .fetch_all(&self.pool)
        .await
        .db()?;
        keys.iter()
            .map(|k| codec::asset_key("steps.asset_key", k))
            .collect()
    }

    pub(crate) async fn read_live_steps(
        &self,
        targets: &[AssetPartition],
    ) -> StoreResult<Vec<(AssetPartition, RunId)>> {
        let mut conn = self.pool.acquire().await.db()?;
        let mut found = Vec::new();
        for chunk in targets.chunks(1000) {
            let assets: Vec<&str> = chunk.iter().map(|t| t.asset.as_str()).collect();
            let partitions: Vec<&str> = chunk
                .iter()
                .map(|t| t.partition.as_ref().map_or("", |p| p.as_str()))
                .collect();
            found.extend(live_in(&mut conn, &assets, &partitions).await?);
        }
        Ok(found)
    }
}

/// The live steps of the targets given as two arrays, through the unique
/// index on live steps.
async fn live_in(
    conn: &mut PgConnection,
    assets: &[&str],
    partitions: &[&str],
) -> StoreResult<Vec<(AssetPartition, RunId)>> {
    let rows = sqlx::query(
        "SELECT s.asset_key, s.partition_key, s.run_id \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t (asset_key, partition_key, ord) \
         JOIN steps AS s ON s.asset_key = t.asset_key \
             AND coalesce(s.partition_key, '') = t.partition_key \
             AND s.state IN ('pending', 'available', 'running', 'retryable') \
         ORDER BY t.ord",
    )
    .bind(assets)
    .bind(partitions)
    .fetch_all(&mut *conn)
    .await
    .db()?;
    rows.iter()
        .map(|row| Ok((codec::target(row)?, codec::run_id(row, "run_id")?)))
        .collect()
}

/// Whether `held` is still the lease of its name, in its term, unexpired; the
/// lease row stays locked against a takeover until the transaction ends.
async fn holds(conn: &mut PgConnection, held: &Lease) -> StoreResult<bool> {
    let found: Option<i32> = sqlx::query_scalar(HOLDS)
        .bind(held.name.as_str())
        .bind(held.holder.0.as_str())
        .bind(term(held))
        .fetch_optional(&mut *conn)
        .await
        .db()?;
    Ok(found.is_some())
}

fn term(held: &Lease) -> i64 {
    i64::try_from(held.term).unwrap_or(i64::MAX)
}

fn rescued_step(row: &PgRow) -> StoreResult<RescuedStep> {
    let error: Option<String> = row.try_get("error").db()?;
    Ok(RescuedStep {
        id: StepId(row.try_get("id").db()?),
        run_id: codec::run_id(row, "run_id")?,
        target: codec::target(row)?,
        state: codec::step_state(&row.try_get::<String, _>("state").db()?)?,
        attempt: codec::count("steps.attempt", row.try_get("attempt").db()?)?,
        max_attempts: codec::count("steps.max_attempts", row.try_get("max_attempts").db()?)?,
        worker: row.try_get("worker").db()?,
        error: error.unwrap_or_default(),
    })
}

fn lease(row: &PgRow) -> StoreResult<Lease> {
    let term: i64 = row.try_get("term").db()?;
    Ok(Lease {
        name: row.try_get("name").db()?,
        holder: WorkerId(row.try_get("holder").db()?),
        term: u64::try_from(term)
            .map_err(|_| StoreError::Corrupt(format!("leases.term: {term} is negative")))?,
        expires_at: codec::time(row, "expires_at")?,
    })
}
