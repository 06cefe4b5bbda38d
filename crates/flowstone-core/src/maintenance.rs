//! The leader's maintenance loops.
//!
//! Any number of processes may run [`run_maintenance`]; the store's lease
//! named [`LEADER_LEASE`] makes one of them the leader, and only the leader
//! works. Each pass the leader:
//!
//! 1. rescues `running` steps whose claim expired because their worker stopped
//!    heartbeating: back to `retryable` with the attempt counted, or `failed`
//!    when that was the last attempt ([`Store::rescue_expired`], a
//!    compare-and-set, so a step that completed a moment earlier stays
//!    completed);
//! 2. forgets workers that have been silent for a long time;
//! 3. finishes runs that are `running` but have no live step left (their last
//!    worker died between recording a step and finishing the run);
//! 4. prunes the queue rows of runs that ended longer ago than the retention
//!    (in batches; materializations, lineage and events are never pruned).
//!
//! Retryable steps need no promotion: a claim takes them once their retry
//! time has passed on the store's clock.
//!
//! A leader that loses its lease (a pause longer than the lease, a lost
//! connection) finds out at its next renewal and stops working; its
//! maintenance writes check the lease's term, so none lands after the
//! takeover.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

use crate::ids::WorkerId;
use crate::store::{Lease, Store, StoreError};
use crate::worker::{self, Stop};

/// The name of the leader's lease in the store.
pub const LEADER_LEASE: &str = "leader";

/// Runs pruned per pass at most, so that one pass stays a short transaction.
const PRUNE_BATCH: u32 = 50;

/// How the maintenance loop behaves.
#[derive(Clone, Debug)]
pub struct MaintenanceOptions {
    /// How long the leader's lease lasts without renewal; another process
    /// takes over within this time after the leader dies.
    pub lease: SignedDuration,
    /// Time between passes (and lease renewals); well under `lease`.
    pub every: Duration,
    /// Workers silent for longer than this are forgotten.
    pub forget_after: SignedDuration,
    /// The queue rows (steps) of runs that ended longer ago than this are
    /// pruned; materializations, lineage and events are kept.
    pub retention: SignedDuration,
}

impl Default for MaintenanceOptions {
    fn default() -> Self {
        MaintenanceOptions {
            lease: SignedDuration::from_secs(30),
            every: Duration::from_secs(5),
            forget_after: SignedDuration::from_secs(3600),
            retention: SignedDuration::from_hours(14 * 24),
        }
    }
}

/// What one pass did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// The lease this process held during the pass; `None` when another
    /// process leads.
    pub lease: Option<Lease>,
    pub retried: usize,
    pub failed: usize,
    pub forgotten: u64,
    pub runs_finished: usize,
    pub runs_pruned: u64,
}

/// Runs maintenance passes as `holder` until `stop` says anything but
/// [`Stop::No`]; gives up the lease on the way out so another process can
/// take over at once.
///
/// A failing store call is logged and tried again at the next pass: the loop
/// outlives a database restart.
pub async fn run_maintenance(
    store: Arc<dyn Store>,
    holder: WorkerId,
    opts: MaintenanceOptions,
    mut stop: watch::Receiver<Stop>,
) {
    let mut held: Option<Lease> = None;
    loop {
        if *stop.borrow() != Stop::No {
            break;
        }
        match pass(store.as_ref(), &holder, &opts).await {
            Ok(done) => {
                log_pass(&held, &done);
                held = done.lease;
            }
            Err(err) => {
                tracing::warn!(holder = %holder, error = %err, "maintenance pass failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.every) => {}
            _ = stop.changed() => {}
        }
    }
    if let Some(lease) = held
        && let Err(err) = store.release_lease(&lease).await
    {
        tracing::warn!(holder = %holder, error = %err, "cannot give up the leader lease");
    }
}

/// One maintenance pass: take or renew the lease, and work if it is held.
///
/// # Errors
///
/// A store failure; the lease, if taken, stays until it expires.
pub async fn pass(
    store: &dyn Store,
    holder: &WorkerId,
    opts: &MaintenanceOptions,
) -> Result<Pass, StoreError> {
    let now = Timestamp::now();
    let Some(lease) = store
        .acquire_lease(LEADER_LEASE, holder, opts.lease, now)
        .await?
    else {
        return Ok(Pass::default());
    };

    let rescued = store.rescue_expired(&lease, Timestamp::now()).await?;
    let before = Timestamp::now()
        .checked_sub(opts.forget_after)
        .unwrap_or(Timestamp::MIN);
    let forgotten = store
        .forget_workers(&lease, before, Timestamp::now())
        .await?;
    let mut runs_finished = 0;
    for run in store.runs_without_live_steps(100).await? {
        worker::finish_run(store, run).await?;
        runs_finished += 1;
    }
    let ended_before = Timestamp::now()
        .checked_sub(opts.retention)
        .unwrap_or(Timestamp::MIN);
    let runs_pruned = store
        .prune_runs(&lease, ended_before, PRUNE_BATCH, Timestamp::now())
        .await?;
    Ok(Pass {
        lease: Some(lease),
        retried: rescued.retried.len(),
        failed: rescued.failed.len(),
        forgotten,
        runs_finished,
        runs_pruned,
    })
}

fn log_pass(before: &Option<Lease>, pass: &Pass) {
    match (before, &pass.lease) {
        (None, Some(lease)) => {
            tracing::info!(holder = %lease.holder, term = lease.term, "became the leader");
        }
        (Some(lease), None) => {
            tracing::warn!(holder = %lease.holder, term = lease.term, "lost the leader lease");
        }
        _ => {}
    }
    if pass.retried + pass.failed > 0 {
        tracing::warn!(
            retried = pass.retried,
            failed = pass.failed,
            "rescued steps whose worker stopped heartbeating"
        );
    }
    if pass.forgotten > 0 {
        tracing::info!(workers = pass.forgotten, "forgot silent workers");
    }
    if pass.runs_pruned > 0 {
        tracing::info!(runs = pass.runs_pruned, "pruned the queue rows of old runs");
    }
    if pass.runs_finished > 0 {
        tracing::info!(
            runs = pass.runs_finished,
            "finished runs left without live steps"
        );
    }
}
