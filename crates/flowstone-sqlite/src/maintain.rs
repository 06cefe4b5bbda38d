//! Leases and the leader's maintenance: rescue of expired claims, forgetting
//! silent workers, and the live-step lookups behind one-live-step-per-target.
//!
//! Maintenance writes are fenced by the leader's lease: each runs in a
//! `BEGIN IMMEDIATE` transaction that first checks the lease is still held
//! in its term, so a leader that lost its lease does nothing.

use flowstone_core::store::{Lease, Rescued, RescuedStep, StepState, StoreError, StoreResult};
use flowstone_core::{AssetKey, AssetPartition, RunId, StepId, WorkerId};
use jiff::Timestamp;
use serde_json::json;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row};

use crate::SqliteStore;
use crate::codec::{self, DbResult, micros};
use crate::write::{insert_events_in, skip_downstream_in};

/// Running steps whose lease ran out go back to retryable (due now) or, on
/// their last attempt, to failed. The `state` and `lease_until` checks are
/// the compare-and-set: a step completed or heartbeated meanwhile stays.
const RESCUE: &str = "UPDATE steps \
     SET state = CASE WHEN attempt < max_attempts THEN 'retryable' ELSE 'failed' END, \
         scheduled_at = ?1, lease_until = NULL, finished_at = ?1, \
         error = 'worker ' || ifnull(worker, '?') || ' stopped heartbeating; its claim expired' \
     WHERE state = 'running' AND lease_until < ?1 \
     RETURNING id, run_id, asset_key, partition_key, state, attempt, max_attempts, worker, error";

impl SqliteStore {
    pub(crate) async fn write_acquire_lease(
        &self,
        name: &str,
        holder: &WorkerId,
        ttl: jiff::SignedDuration,
        now: Timestamp,
    ) -> StoreResult<Option<Lease>> {
        let mut conn = self.writer.lock().await;
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, term, expires_at) VALUES (?1, ?2, 1, ?3) \
             ON CONFLICT (name) DO UPDATE SET \
                 term = CASE WHEN leases.holder = excluded.holder THEN leases.term \
                             ELSE leases.term + 1 END, \
                 holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4 \
             RETURNING name, holder, term, expires_at",
        )
        .bind(name)
        .bind(holder.0.as_str())
        .bind(codec::micros_after(now, ttl))
        .bind(micros(now))
        .fetch_optional(&mut *conn)
        .await
        .db()?;
        row.as_ref().map(lease).transpose()
    }

    pub(crate) async fn write_release_lease(&self, held: &Lease) -> StoreResult<()> {
        let mut conn = self.writer.lock().await;
        // Expired, not deleted: the next holder's term follows this one.
        sqlx::query(
            "UPDATE leases SET expires_at = 0 WHERE name = ?1 AND holder = ?2 AND term = ?3",
        )
        .bind(held.name.as_str())
        .bind(held.holder.0.as_str())
        .bind(i64::try_from(held.term).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await
        .db()?;
        Ok(())
    }

    pub(crate) async fn read_lease(&self, name: &str) -> StoreResult<Option<Lease>> {
        let mut conn = self.reader().await?;
        let row = sqlx::query("SELECT name, holder, term, expires_at FROM leases WHERE name = ?1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .db()?;
        row.as_ref().map(lease).transpose()
    }

    pub(crate) async fn write_rescue_expired(
        &self,
        held: &Lease,
        now: Timestamp,
    ) -> StoreResult<Rescued> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;
        if !holds(&mut tx, held, now).await? {
            return Ok(Rescued::default());
        }
        let rows = sqlx::query(RESCUE)
            .bind(micros(now))
            .fetch_all(&mut *tx)
            .await
            .db()?;

        let mut rescued = Rescued::default();
        let mut events = Vec::with_capacity(rows.len());
        let mut causes = Vec::new();
        let mut runs = Vec::new();
        for row in &rows {
            let step = rescued_step(row)?;
            if step.state == StepState::Failed {
                causes.push(json!([step.id.0, step.skip_cause()]));
                rescued.failed.push(step.id);
            } else {
                rescued.retried.push(step.id);
            }
            events.push(codec::event_json(&step.event(now)));
            runs.push(step.run_id);
        }
        events.extend(skip_downstream_in(&mut tx, causes, now).await?);
        insert_events_in(&mut tx, events).await?;
        tx.commit().await.db()?;
        self.notify(runs);
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
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;
        if !holds(&mut tx, held, now).await? {
            return Ok(0);
        }
        let gone = sqlx::query("DELETE FROM workers WHERE heartbeat_at < ?1")
            .bind(micros(before))
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
        now: Timestamp,
    ) -> StoreResult<u64> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;
        if !holds(&mut tx, held, now).await? {
            return Ok(0);
        }
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM runs \
             WHERE pruned_counts IS NULL AND finished_at < ?1 \
               AND state IN ('succeeded', 'failed', 'cancelled') \
             ORDER BY finished_at LIMIT ?2",
        )
        .bind(micros(before))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .db()?;
        if ids.is_empty() {
            return Ok(0);
        }
        let runs = ids
            .iter()
            .map(|id| codec::run_id("runs.id", id))
            .collect::<StoreResult<Vec<_>>>()?;
        let counts = crate::read::counts_to_keep(&mut tx, &runs).await?;
        for run in &runs {
            let kept = counts.get(run).copied().unwrap_or_default();
            sqlx::query("UPDATE runs SET pruned_counts = ?2 WHERE id = ?1")
                .bind(run.to_string())
                .bind(serde_json::to_string(&kept).unwrap_or_default())
                .execute(&mut *tx)
                .await
                .db()?;
        }
        let list = serde_json::to_string(&ids).unwrap_or_default();
        sqlx::query(
            "DELETE FROM step_deps WHERE downstream_id IN ( \
                 SELECT id FROM steps WHERE run_id IN (SELECT value FROM jsonb_each(?1))) \
             OR upstream_id IN ( \
                 SELECT id FROM steps WHERE run_id IN (SELECT value FROM jsonb_each(?1)))",
        )
        .bind(&list)
        .execute(&mut *tx)
        .await
        .db()?;
        sqlx::query(
            "DELETE FROM steps WHERE run_id IN (SELECT value FROM jsonb_each(?1)) \
               AND state IN ('completed', 'skipped', 'cancelled')",
        )
        .bind(&list)
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()?;
        Ok(runs.len() as u64)
    }

    pub(crate) async fn read_runs_without_live_steps(&self, limit: u32) -> StoreResult<Vec<RunId>> {
        let mut conn = self.reader().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM runs AS r WHERE state = 'running' AND NOT EXISTS ( \
                 SELECT 1 FROM steps AS s WHERE s.run_id = r.id \
                   AND s.state IN ('pending', 'available', 'running', 'retryable')) \
             ORDER BY created_at, id LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .db()?;
        ids.iter().map(|id| codec::run_id("runs.id", id)).collect()
    }

    pub(crate) async fn read_has_live_steps(&self, run: RunId) -> StoreResult<bool> {
        let mut conn = self.reader().await?;
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM steps WHERE run_id = ?1 \
               AND state IN ('pending', 'available', 'running', 'retryable') LIMIT 1",
        )
        .bind(run.to_string())
        .fetch_optional(&mut *conn)
        .await
        .db()?;
        Ok(found.is_some())
    }

    pub(crate) async fn read_live_assets(&self) -> StoreResult<Vec<AssetKey>> {
        let mut conn = self.reader().await?;
        // Through the partial unique index on live steps.
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT asset_key FROM steps \
             WHERE state IN ('pending', 'available', 'running', 'retryable') ORDER BY asset_key",
        )
        .fetch_all(&mut *conn)
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
        let mut conn = self.reader().await?;
        live_steps_in(&mut conn, targets).await
    }
}

/// Of `targets`, those with a live step, and its run; through the unique
/// index on live steps, one seek per target.
pub(crate) async fn live_steps_in(
    conn: &mut SqliteConnection,
    targets: &[AssetPartition],
) -> StoreResult<Vec<(AssetPartition, RunId)>> {
    let mut found = Vec::new();
    for chunk in targets.chunks(500) {
        let items: Vec<serde_json::Value> = chunk
            .iter()
            .map(|t| json!([t.asset.as_str(), t.partition.as_ref().map(|p| p.as_str())]))
            .collect();
        let rows = sqlx::query(
            "SELECT s.asset_key, s.partition_key, s.run_id \
             FROM jsonb_each(?1) AS j \
             JOIN steps AS s ON s.asset_key = j.value ->> 0 \
                 AND ifnull(s.partition_key, '') = ifnull(j.value ->> 1, '') \
                 AND s.state IN ('pending', 'available', 'running', 'retryable') \
             ORDER BY j.key",
        )
        .bind(serde_json::Value::Array(items).to_string())
        .fetch_all(&mut *conn)
        .await
        .db()?;
        for row in &rows {
            let run: String = row.try_get("run_id").db()?;
            found.push((codec::target(row)?, codec::run_id("steps.run_id", &run)?));
        }
    }
    Ok(found)
}

/// Whether `held` is still the lease of its name, in its term, unexpired.
async fn holds(conn: &mut SqliteConnection, held: &Lease, now: Timestamp) -> StoreResult<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM leases \
         WHERE name = ?1 AND holder = ?2 AND term = ?3 AND expires_at > ?4",
    )
    .bind(held.name.as_str())
    .bind(held.holder.0.as_str())
    .bind(i64::try_from(held.term).unwrap_or(i64::MAX))
    .bind(micros(now))
    .fetch_optional(&mut *conn)
    .await
    .db()?;
    Ok(found.is_some())
}

fn rescued_step(row: &sqlx::sqlite::SqliteRow) -> StoreResult<RescuedStep> {
    let run: String = row.try_get("run_id").db()?;
    let error: Option<String> = row.try_get("error").db()?;
    Ok(RescuedStep {
        id: StepId(row.try_get("id").db()?),
        run_id: codec::run_id("steps.run_id", &run)?,
        target: codec::target(row)?,
        state: codec::step_state(&row.try_get::<String, _>("state").db()?)?,
        attempt: codec::count("steps.attempt", row.try_get("attempt").db()?)?,
        max_attempts: codec::count("steps.max_attempts", row.try_get("max_attempts").db()?)?,
        worker: row.try_get("worker").db()?,
        error: error.unwrap_or_default(),
    })
}

fn lease(row: &sqlx::sqlite::SqliteRow) -> StoreResult<Lease> {
    let term: i64 = row.try_get("term").db()?;
    Ok(Lease {
        name: row.try_get("name").db()?,
        holder: WorkerId(row.try_get("holder").db()?),
        term: u64::try_from(term)
            .map_err(|_| StoreError::Corrupt(format!("leases.term: {term} is negative")))?,
        expires_at: codec::timestamp("leases.expires_at", row.try_get("expires_at").db()?)?,
    })
}
