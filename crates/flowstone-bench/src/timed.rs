//! A [`Store`] wrapper that times every call, for the `--profile` breakdown.
//!
//! Wall time per store method, summed over calls. Calls made at the same time
//! (inputs loaded by several steps at once) add up, so a sum can pass the run's
//! wall time; the count and the mean per call are the useful figures there.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flowstone::store::{
    ClaimRequest, ClaimedStep, Completion, EventRecord, Failure, Lease, LineageEdge,
    MaterializationRecord, NewEvent, NewRun, Outcome, PartitionRecord, Rescued, RunRecord,
    RunState, StepCounts, StepRecord, StoreResult, WorkerRecord,
};
use flowstone::token::{NewToken, TokenRecord};
use flowstone::{
    AssetKey, AssetPartition, EventId, MaterializationId, RunId, StepId, Store, WorkerId,
};
use jiff::Timestamp;
use serde_json::json;

/// Calls, time and items of one store method.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    calls: u64,
    /// Steps, completions or targets the calls carried.
    items: u64,
    time: Duration,
}

/// Wraps a store and times its calls.
pub struct TimedStore {
    inner: Arc<dyn Store>,
    tallies: Mutex<BTreeMap<&'static str, Tally>>,
}

impl TimedStore {
    pub fn new(inner: Arc<dyn Store>) -> TimedStore {
        TimedStore {
            inner,
            tallies: Mutex::new(BTreeMap::new()),
        }
    }

    /// Per method: calls, items, total and mean milliseconds.
    pub fn report(&self) -> serde_json::Value {
        let tallies = self.tallies.lock().expect("no panic while tallying");
        let methods: serde_json::Map<String, serde_json::Value> = tallies
            .iter()
            .map(|(name, t)| {
                let ms = t.time.as_secs_f64() * 1000.0;
                let mean_us = ms * 1000.0 / t.calls.max(1) as f64;
                let row =
                    json!({ "calls": t.calls, "items": t.items, "ms": ms, "mean_us": mean_us });
                ((*name).to_owned(), row)
            })
            .collect();
        serde_json::Value::Object(methods)
    }

    async fn timed<T>(
        &self,
        name: &'static str,
        items: impl FnOnce(&T) -> u64,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let started = Instant::now();
        let result = call.await;
        let time = started.elapsed();
        let count = result.as_ref().map(items).unwrap_or(0);
        let mut tallies = self.tallies.lock().expect("no panic while tallying");
        let tally = tallies.entry(name).or_default();
        tally.calls += 1;
        tally.items += count;
        tally.time += time;
        result
    }
}

fn none<T>(_: &T) -> u64 {
    0
}

#[async_trait]
impl Store for TimedStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<flowstone::store::Notice>> {
        self.inner.notices()
    }

    async fn create_run(&self, run: NewRun) -> StoreResult<RunRecord> {
        let steps = run.steps.len() as u64;
        self.timed("create_run", |_| steps, self.inner.create_run(run))
            .await
    }

    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<ClaimedStep>> {
        self.timed("claim", |v: &Vec<_>| v.len() as u64, self.inner.claim(req))
            .await
    }

    async fn complete(&self, batch: Vec<Completion>) -> StoreResult<Vec<Outcome>> {
        let n = batch.len() as u64;
        self.timed("complete", |_| n, self.inner.complete(batch))
            .await
    }

    async fn complete_and_claim(
        &self,
        batch: Vec<Completion>,
        next: ClaimRequest,
    ) -> StoreResult<(Vec<Outcome>, Vec<ClaimedStep>)> {
        let n = batch.len() as u64;
        let work = self.inner.complete_and_claim(batch, next);
        self.timed(
            "complete_and_claim",
            |(_, claimed): &(_, Vec<_>)| n + claimed.len() as u64,
            work,
        )
        .await
    }

    fn commits_in_flight(&self) -> usize {
        self.inner.commits_in_flight()
    }

    async fn fail(&self, batch: Vec<Failure>) -> StoreResult<Vec<Outcome>> {
        let n = batch.len() as u64;
        self.timed("fail", |_| n, self.inner.fail(batch)).await
    }

    async fn release(
        &self,
        run: Option<RunId>,
        workers: &[WorkerId],
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<StepId>> {
        let call = self.inner.release(run, workers, reason, now);
        self.timed("release", |v: &Vec<_>| v.len() as u64, call)
            .await
    }

    async fn set_run_state(
        &self,
        run: RunId,
        from: &[RunState],
        to: RunState,
        now: Timestamp,
    ) -> StoreResult<bool> {
        self.timed(
            "set_run_state",
            none,
            self.inner.set_run_state(run, from, to, now),
        )
        .await
    }

    async fn cancel_run(&self, run: RunId, now: Timestamp) -> StoreResult<bool> {
        self.timed("cancel_run", none, self.inner.cancel_run(run, now))
            .await
    }

    async fn next_retry_at(&self, run: Option<RunId>) -> StoreResult<Option<Timestamp>> {
        self.timed("next_retry_at", none, self.inner.next_retry_at(run))
            .await
    }

    async fn register_worker(&self, worker: &WorkerRecord) -> StoreResult<()> {
        self.timed("register_worker", none, self.inner.register_worker(worker))
            .await
    }

    async fn heartbeat(
        &self,
        worker: &WorkerId,
        now: Timestamp,
        lease: jiff::SignedDuration,
    ) -> StoreResult<bool> {
        self.timed("heartbeat", none, self.inner.heartbeat(worker, now, lease))
            .await
    }

    async fn release_unknown(
        &self,
        worker: &WorkerId,
        known: &[StepId],
        claimed_before: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Vec<StepId>> {
        let released = self
            .inner
            .release_unknown(worker, known, claimed_before, now);
        self.timed("release_unknown", |v: &Vec<_>| v.len() as u64, released)
            .await
    }

    async fn workers(&self) -> StoreResult<Vec<WorkerRecord>> {
        self.timed("workers", none, self.inner.workers()).await
    }

    async fn deregister_worker(&self, worker: &WorkerId) -> StoreResult<()> {
        self.timed(
            "deregister_worker",
            none,
            self.inner.deregister_worker(worker),
        )
        .await
    }

    async fn create_token(&self, token: NewToken) -> StoreResult<TokenRecord> {
        self.inner.create_token(token).await
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        self.inner.tokens().await
    }

    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        self.inner.token_by_hash(hash).await
    }

    async fn has_active_tokens(&self, now: Timestamp) -> StoreResult<bool> {
        self.inner.has_active_tokens(now).await
    }

    async fn revoke_token(&self, name: &str, now: Timestamp) -> StoreResult<Option<TokenRecord>> {
        self.inner.revoke_token(name, now).await
    }

    async fn token_used(&self, id: i64, now: Timestamp) -> StoreResult<()> {
        self.inner.token_used(id, now).await
    }

    async fn run(&self, id: RunId) -> StoreResult<Option<RunRecord>> {
        self.timed("run", none, self.inner.run(id)).await
    }

    async fn runs(&self, limit: u32) -> StoreResult<Vec<RunRecord>> {
        self.timed("runs", none, self.inner.runs(limit)).await
    }

    async fn steps(&self, run: RunId) -> StoreResult<Vec<StepRecord>> {
        self.timed("steps", |v: &Vec<_>| v.len() as u64, self.inner.steps(run))
            .await
    }

    async fn step_counts(&self, run: RunId) -> StoreResult<StepCounts> {
        self.timed("step_counts", none, self.inner.step_counts(run))
            .await
    }

    async fn has_live_steps(&self, run: RunId) -> StoreResult<bool> {
        self.timed("has_live_steps", none, self.inner.has_live_steps(run))
            .await
    }

    async fn running_workers(&self, run: RunId) -> StoreResult<Vec<WorkerId>> {
        self.timed("running_workers", none, self.inner.running_workers(run))
            .await
    }

    async fn append_events(&self, events: Vec<NewEvent>) -> StoreResult<()> {
        let n = events.len() as u64;
        self.timed("append_events", |_| n, self.inner.append_events(events))
            .await
    }

    async fn events(
        &self,
        run: RunId,
        after: Option<EventId>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        self.timed(
            "events",
            |v: &Vec<_>| v.len() as u64,
            self.inner.events(run, after, limit),
        )
        .await
    }

    async fn materialization(
        &self,
        id: MaterializationId,
    ) -> StoreResult<Option<MaterializationRecord>> {
        self.timed("materialization", none, self.inner.materialization(id))
            .await
    }

    async fn latest_materializations(
        &self,
        targets: &[AssetPartition],
    ) -> StoreResult<Vec<MaterializationRecord>> {
        let n = targets.len() as u64;
        self.timed(
            "latest_materializations",
            |_| n,
            self.inner.latest_materializations(targets),
        )
        .await
    }

    async fn partitions(&self, asset: &AssetKey) -> StoreResult<Vec<PartitionRecord>> {
        self.timed(
            "partitions",
            |v: &Vec<_>| v.len() as u64,
            self.inner.partitions(asset),
        )
        .await
    }

    async fn inputs_of(
        &self,
        of: &[MaterializationId],
    ) -> StoreResult<Vec<(LineageEdge, MaterializationRecord)>> {
        self.timed(
            "inputs_of",
            |v: &Vec<_>| v.len() as u64,
            self.inner.inputs_of(of),
        )
        .await
    }

    async fn consumers_of(
        &self,
        of: &[MaterializationId],
    ) -> StoreResult<Vec<(LineageEdge, MaterializationRecord)>> {
        self.timed(
            "consumers_of",
            |v: &Vec<_>| v.len() as u64,
            self.inner.consumers_of(of),
        )
        .await
    }

    async fn materializations_of_run(&self, run: RunId) -> StoreResult<Vec<MaterializationRecord>> {
        let call = self.inner.materializations_of_run(run);
        self.timed("materializations_of_run", |v: &Vec<_>| v.len() as u64, call)
            .await
    }

    async fn live_assets(&self) -> StoreResult<Vec<AssetKey>> {
        self.timed(
            "live_assets",
            |v: &Vec<_>| v.len() as u64,
            self.inner.live_assets(),
        )
        .await
    }

    async fn live_steps(
        &self,
        targets: &[AssetPartition],
    ) -> StoreResult<Vec<(AssetPartition, RunId)>> {
        let call = self.inner.live_steps(targets);
        self.timed("live_steps", |v: &Vec<_>| v.len() as u64, call)
            .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &WorkerId,
        ttl: jiff::SignedDuration,
        now: Timestamp,
    ) -> StoreResult<Option<Lease>> {
        let call = self.inner.acquire_lease(name, holder, ttl, now);
        self.timed("acquire_lease", none, call).await
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        self.timed("release_lease", none, self.inner.release_lease(lease))
            .await
    }

    async fn lease(&self, name: &str) -> StoreResult<Option<Lease>> {
        self.timed("lease", none, self.inner.lease(name)).await
    }

    async fn rescue_expired(&self, lease: &Lease, now: Timestamp) -> StoreResult<Rescued> {
        let call = self.inner.rescue_expired(lease, now);
        self.timed("rescue_expired", none, call).await
    }

    async fn forget_workers(
        &self,
        lease: &Lease,
        before: Timestamp,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let call = self.inner.forget_workers(lease, before, now);
        self.timed("forget_workers", none, call).await
    }

    async fn prune_runs(
        &self,
        lease: &Lease,
        before: Timestamp,
        limit: u32,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let call = self.inner.prune_runs(lease, before, limit, now);
        self.timed("prune_runs", none, call).await
    }

    async fn runs_without_live_steps(&self, limit: u32) -> StoreResult<Vec<RunId>> {
        let call = self.inner.runs_without_live_steps(limit);
        self.timed("runs_without_live_steps", |v: &Vec<_>| v.len() as u64, call)
            .await
    }

    async fn events_position(&self) -> StoreResult<Option<EventId>> {
        self.timed("events_position", none, self.inner.events_position())
            .await
    }

    async fn events_since(
        &self,
        after: Option<EventId>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        let call = self.inner.events_since(after, limit);
        self.timed("events_since", |v: &Vec<_>| v.len() as u64, call)
            .await
    }
}
