//! The worker loop: claim available steps, run them with bounded concurrency,
//! record what they produced.
//!
//! One loop, used by a single-process `materialize` and by every worker of a
//! cluster alike. Each pass has three phases, kept apart:
//!
//! 1. claim: as many steps as there are free slots, in one store call;
//! 2. work: each step loads its inputs through I/O managers, calls the asset
//!    and stores the value, in its own task; nothing is written to the store;
//! 3. commit: the finished steps go to the store in one batch, where each
//!    step's materialization, lineage edges, events and the release of its
//!    downstream steps commit together (see [`crate::store`]).
//!
//! By default a batch also claims for the free slots, and the loop waits for
//! its answer. A store that gains from overlapping commits
//! ([`Store::commits_in_flight`] above 1, PostgreSQL) has up to that many
//! batches committing, each in a task of its own, while the loop claims on
//! its own for the slots their steps left and keeps working; its batches
//! claim only when the last claim found the queue drained (steps they
//! release are then claimed at once). Each step is in one batch, and a
//! batch that fails leaves its steps `running`, as a crash would.
//!
//! A step whose value was stored but whose commit did not happen (a crash
//! between 2 and 3) is still `running` in the store; it is released and runs
//! again, and only that second run is recorded. A materialization is recorded
//! at most once per step.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::asset::{AssetDef, InputSlot, Inputs};
use crate::context::{AssetContext, ContextParts};
use crate::definitions::Definitions;
use crate::error::AssetError;
use crate::ids::{AssetPartition, MaterializationId, RunId, StepId, WorkerId};
use crate::io::IoManager;
use crate::plan::{LOOKUP_CHUNK, upstream_targets_by_dep};
use crate::store::{
    ClaimRequest, ClaimedStep, Completion, EventKind, Failure, Level, NewEvent, NewMaterialization,
    RunState, StepCounts, Store, StoreError, WorkerRecord,
};

/// How a worker loop behaves.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Steps run at once.
    pub max_parallel: usize,
    /// Work only on this run, and stop when it has no live step left.
    pub run: Option<RunId>,
    /// How long a claim lasts without a heartbeat.
    pub lease: SignedDuration,
    /// How often the worker renews its claims.
    pub heartbeat: Duration,
    /// How long to wait before looking again when nothing is claimable.
    pub poll: Duration,
    /// Claim only steps of these queues; `None` serves every queue.
    pub queues: Option<Vec<String>>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            max_parallel: default_parallelism(),
            run: None,
            lease: SignedDuration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            poll: Duration::from_millis(50),
            queues: None,
        }
    }
}

/// The number of CPUs, at least 1.
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Asks a worker loop to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// Keep going.
    No,
    /// Claim nothing more; let running steps finish and record them.
    Drain,
    /// Abandon running steps and hand them back to the queue.
    Abort,
}

/// Live figures of a run, as a worker sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub steps: StepCounts,
    /// Materializations this worker recorded.
    pub recorded: u64,
    /// Steps this worker saw fail (after their last attempt).
    pub failed: u64,
}

/// Why a worker loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopEnd {
    /// The run has no live step left.
    RunDone,
    /// Asked to stop.
    Stopped,
}

/// What a worker needs, shared by its step tasks.
pub(crate) struct Shared {
    pub defs: Arc<Definitions>,
    pub store: Arc<dyn Store>,
    pub default_io: Arc<dyn IoManager>,
    pub worker: WorkerId,
    /// Steps this loop claimed and has not yet recorded or handed back. Its
    /// heartbeat hands back the worker's running steps that are not held
    /// here (claims whose answer was lost), see [`Store::release_unknown`].
    pub held: Mutex<HashSet<StepId>>,
}

impl Shared {
    fn hold(&self, step: StepId) {
        self.held_steps().insert(step);
    }

    fn let_go(&self, steps: impl IntoIterator<Item = StepId>) {
        let mut held = self.held_steps();
        for step in steps {
            held.remove(&step);
        }
    }

    fn held_steps(&self) -> std::sync::MutexGuard<'_, HashSet<StepId>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn io_for(&self, def: &AssetDef) -> Arc<dyn IoManager> {
        self.defs
            .io_manager(&def.io_manager)
            .unwrap_or_else(|| self.default_io.clone())
    }
}

/// A step's result, ready to commit.
enum Finished {
    Done(Box<Completion>),
    Failed(Failure),
}

/// Runs the worker loop until the run is done or `stop` says so.
///
/// # Cancellation
///
/// Dropping the future abandons running steps without releasing them; they
/// stay `running` until a heartbeat check or `runs resume` releases them.
/// Prefer [`Stop::Drain`] or [`Stop::Abort`].
pub(crate) async fn run_loop(
    shared: Arc<Shared>,
    opts: WorkerOptions,
    mut stop: watch::Receiver<Stop>,
    progress: watch::Sender<Progress>,
) -> Result<LoopEnd, StoreError> {
    let store = shared.store.clone();
    let record = WorkerRecord {
        id: shared.worker.clone(),
        host: crate::host_name(),
        pid: std::process::id(),
        started_at: Timestamp::now(),
        heartbeat_at: Timestamp::now(),
    };
    store.register_worker(&record).await?;
    let heartbeat = spawn_heartbeat(shared.clone(), record, &opts);

    let result = claim_work_commit(&shared, &opts, &mut stop, &progress).await;

    heartbeat.abort();
    if let Err(err) = store.deregister_worker(&shared.worker).await {
        tracing::warn!(worker = %shared.worker, error = %err, "cannot deregister worker");
    }
    result
}

/// Renews the worker's claims and heartbeat every `opts.heartbeat`; registers
/// the worker again if the leader forgot it after a long silence.
fn spawn_heartbeat(
    shared: Arc<Shared>,
    record: WorkerRecord,
    opts: &WorkerOptions,
) -> tokio::task::JoinHandle<()> {
    let every = opts.heartbeat;
    let lease = opts.lease;
    tokio::spawn(async move {
        let store = &shared.store;
        let worker = &record.id;
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let now = Timestamp::now();
            match store.heartbeat(worker, now, lease).await {
                Ok(true) => release_unknown(&shared, now, lease).await,
                Ok(false) => {
                    tracing::warn!(worker = %worker, "worker was forgotten; registering again");
                    let again = WorkerRecord {
                        heartbeat_at: now,
                        ..record.clone()
                    };
                    if let Err(err) = store.register_worker(&again).await {
                        tracing::warn!(worker = %worker, error = %err, "cannot register again");
                    }
                }
                Err(err) => tracing::warn!(worker = %worker, error = %err, "heartbeat failed"),
            }
        }
    })
}

/// Hands back the worker's running steps that its loop does not hold and
/// that were claimed more than half a lease ago (a claim still on its way
/// back to the loop is younger).
async fn release_unknown(shared: &Shared, now: Timestamp, lease: SignedDuration) {
    let worker = &shared.worker;
    let claimed_before = now - lease / 2;
    let held: Vec<StepId> = shared.held_steps().iter().copied().collect();
    match shared
        .store
        .release_unknown(worker, &held, claimed_before, now)
        .await
    {
        Ok(released) if !released.is_empty() => tracing::warn!(
            worker = %worker,
            steps = ?released,
            "handed back steps this worker claimed but never heard of (a lost answer)"
        ),
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(worker = %worker, error = %err, "cannot hand back unknown steps")
        }
    }
}

async fn claim_work_commit(
    shared: &Arc<Shared>,
    opts: &WorkerOptions,
    stop: &mut watch::Receiver<Stop>,
    progress: &watch::Sender<Progress>,
) -> Result<LoopEnd, StoreError> {
    let store = &shared.store;
    let max_parallel = opts.max_parallel.max(1);
    // With more than one batch committing at once, a step's slot is filled
    // again by a claim of its own as soon as the step finishes, instead of
    // by the claim of the batch that records the step, which returns only
    // after that batch's log flush.
    let in_flight = store.commits_in_flight().max(1);
    let claim_ahead = in_flight > 1;
    let mut work = Work::default();
    let mut last_counts = std::time::Instant::now();
    let mut seen = Progress::default();
    if let Some(run) = opts.run {
        seen.steps = store.step_counts(run).await?;
        progress.send_replace(seen.clone());
    }

    // Wake-ups pushed after other commits (other workers' completions, new
    // runs); the loop also polls every `opts.poll`.
    let mut notices = store.notices();

    // Whether the last commit already claimed for the free slots.
    let mut claimed_with_commit = false;
    // Claiming ahead: whether the last claim found fewer ready steps than
    // it asked for; batches then claim, as they may release some.
    let mut drained = false;
    loop {
        let signal = *stop.borrow();

        // Claim: fill the free slots, unless the last commit just did (or,
        // claiming ahead, the queue looked empty at the last claim). Claiming
        // ahead, the steps claimed and not yet recorded stay within
        // `in_flight` times the slots, so that batches stay small when the
        // database falls behind.
        let mut free = work.free(max_parallel);
        if claim_ahead {
            free = free.min((max_parallel * in_flight).saturating_sub(work.unrecorded()));
        }
        let claim_now = if claim_ahead {
            !drained
        } else {
            !claimed_with_commit
        };
        if signal == Stop::No && free > 0 && claim_now {
            let req = claim_request(shared, opts, free);
            let claimed = retry("claim", stop, || store.claim(req.clone())).await?;
            drained = claimed.len() < free;
            spawn_claimed(shared, claimed, &mut work.tasks, &mut work.running).await;
        }
        claimed_with_commit = false;

        // Nothing running or committing: finished, stopped, or waiting for
        // work.
        if work.running.is_empty() && work.commits.is_empty() {
            if signal != Stop::No {
                return Ok(LoopEnd::Stopped);
            }
            if let Some(run) = opts.run {
                let counts = retry("step_counts", stop, || store.step_counts(run)).await?;
                if counts.live() == 0 {
                    seen.steps = counts;
                    progress.send_replace(seen.clone());
                    return Ok(LoopEnd::RunDone);
                }
            }
            let wait = match retry("next_retry_at", stop, || store.next_retry_at(opts.run)).await? {
                Some(at) => {
                    let until = Timestamp::now().duration_until(at);
                    Duration::try_from(until).unwrap_or_default().min(opts.poll)
                }
                None => opts.poll,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
                _ = next_notice(&mut notices, opts.run) => {}
            }
            drained = false;
            continue;
        }

        // Work: wait for a step to finish, then take every one that is
        // ready; or for a batch to commit.
        let mut answer = None;
        tokio::select! {
            Some(joined) = work.tasks.join_next_with_id(), if !work.tasks.is_empty() => {
                work.take(joined, shared);
                work.linger(shared).await;
            }
            Some(joined) = work.commits.join_next_with_id(), if !work.commits.is_empty() => {
                answer = Some(joined);
            }
            _ = stop.changed() => {
                if *stop.borrow() == Stop::Abort {
                    work.tasks.abort_all();
                    while work.tasks.join_next().await.is_some() {}
                    // Batches committing finish first, so that the release
                    // below sees the steps they claimed.
                    while let Some(joined) = work.commits.join_next().await {
                        if let Ok(Committed { steps, .. }) = joined {
                            shared.let_go(steps);
                        }
                    }
                    let released = release_own(store.as_ref(), &shared.worker, opts.run)
                        .await?;
                    shared.let_go(work.running.values().map(|(step, _)| step.id));
                    shared.let_go(work.ready.done.iter().map(|c| c.step));
                    shared.let_go(work.ready.failed.iter().map(|f| f.step));
                    tracing::info!(worker = %shared.worker, steps = released.len(),
                                   "released running steps");
                    return Ok(LoopEnd::Stopped);
                }
                continue;
            }
        }
        if let Some(joined) = answer {
            let (claimed, allowed) =
                committed(shared, opts, stop, &mut work, &mut seen, joined).await?;
            if allowed > 0 {
                drained = claimed < allowed;
            }
        }

        // Commit: failures at once, before the completions, so that the
        // steps they skip are never claimed; completions in a batch of their
        // own when fewer than `in_flight` are committing.
        if !work.ready.failed.is_empty() {
            let failed = std::mem::take(&mut work.ready.failed);
            seen.failed += failed.iter().filter(|f| f.retry_at.is_none()).count() as u64;
            retry("fail", stop, || store.fail(failed.clone())).await?;
            shared.let_go(failed.iter().map(|f| f.step));
            if work.ready.done.is_empty() {
                let runs = std::mem::take(&mut work.ready.runs);
                finish_runs(shared, opts, stop, &work, runs).await?;
            }
        }
        if !work.ready.done.is_empty() && work.commits.len() < in_flight {
            // The batch claims too (downstream steps it releases are claimed
            // at once), unless claims of their own fill the slots.
            let mut next = claim_request(shared, opts, work.free(max_parallel));
            if *stop.borrow() != Stop::No || (claim_ahead && !drained) {
                next.limit = 0;
            }
            work.send(shared, stop, next);
            // Without claiming ahead, the loop waits for the batch's answer.
            if !claim_ahead && let Some(joined) = work.commits.join_next_with_id().await {
                let (claimed, _) =
                    committed(shared, opts, stop, &mut work, &mut seen, joined).await?;
                claimed_with_commit = claimed > 0;
            }
        }

        // Progress, at most every 100 ms.
        if let Some(run) = opts.run
            && last_counts.elapsed() >= Duration::from_millis(100)
        {
            seen.steps = retry("step_counts", stop, || store.step_counts(run)).await?;
            last_counts = std::time::Instant::now();
        }
        progress.send_replace(seen.clone());
    }
}

/// What a worker loop holds: steps running, steps finished and not yet
/// sent, batches committing.
#[derive(Default)]
struct Work {
    tasks: JoinSet<Finished>,
    /// The claim each task runs, and when it started.
    running: HashMap<tokio::task::Id, (ClaimedStep, Timestamp)>,
    /// Finished steps not yet sent to the store.
    ready: Ready,
    /// Completion batches committing, each in a task of its own.
    commits: JoinSet<Committed>,
    /// The runs of each batch committing.
    committing: HashMap<tokio::task::Id, HashSet<RunId>>,
    /// Slots that the claims of the batches committing may fill.
    reserved: usize,
    /// Steps in the batches committing.
    recording: usize,
}

/// Finished steps, ready to commit.
#[derive(Default)]
struct Ready {
    done: Vec<Completion>,
    failed: Vec<Failure>,
    runs: HashSet<RunId>,
}

/// A completion batch's answer, with what the loop needs to take it.
struct Committed {
    /// The batch's steps, held until it answers.
    steps: Vec<StepId>,
    /// The slots its claim was allowed to fill.
    reserved: usize,
    result: Result<(Vec<crate::store::Outcome>, Vec<ClaimedStep>), StoreError>,
}

impl Work {
    /// The slots neither running a step nor promised to a batch's claim.
    fn free(&self, max_parallel: usize) -> usize {
        max_parallel.saturating_sub(self.running.len() + self.reserved)
    }

    /// Steps claimed here and not yet recorded: running, finished, or in a
    /// batch committing.
    fn unrecorded(&self) -> usize {
        self.running.len() + self.ready.done.len() + self.ready.failed.len() + self.recording
    }

    /// Whether a step of `run` is running here, finished but not sent, or
    /// in a batch still committing.
    fn holds_run(&self, run: RunId) -> bool {
        self.running.values().any(|(step, _)| step.run_id == run)
            || self.ready.runs.contains(&run)
            || self.committing.values().any(|runs| runs.contains(&run))
    }

    /// Adds a joined step task to the ready steps.
    fn take(
        &mut self,
        joined: Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
        shared: &Shared,
    ) {
        match finished(joined, &mut self.running, shared, &mut self.ready.runs) {
            Finished::Done(c) => self.ready.done.push(*c),
            Finished::Failed(f) => self.ready.failed.push(f),
        }
    }

    /// Takes every step that finished, then waits while steps keep
    /// finishing, at most [`LINGER`] for the next one and [`LINGER_MAX`] in
    /// all: steps that finish within a moment of each other share a commit,
    /// and each commit waits for the database to flush its log, so it costs
    /// about as much for one step as for thirty (no-op steps claimed
    /// together finish within microseconds, but are polled one after
    /// another).
    async fn linger(&mut self, shared: &Shared) {
        while let Some(joined) = self.tasks.try_join_next_with_id() {
            self.take(joined, shared);
        }
        let lingering = std::time::Instant::now();
        while !self.running.is_empty() && lingering.elapsed() < LINGER_MAX {
            match tokio::time::timeout(LINGER, self.tasks.join_next_with_id()).await {
                Ok(Some(joined)) => self.take(joined, shared),
                Ok(None) | Err(_) => break,
            }
            while let Some(joined) = self.tasks.try_join_next_with_id() {
                self.take(joined, shared);
            }
        }
    }

    /// Sends the ready completions to the store in a task of its own, with
    /// the claim `next`. A retry after a lost answer is safe: what was
    /// recorded is fenced the second time.
    fn send(&mut self, shared: &Shared, stop: &watch::Receiver<Stop>, next: ClaimRequest) {
        let done = std::mem::take(&mut self.ready.done);
        let runs = std::mem::take(&mut self.ready.runs);
        let reserved = next.limit as usize;
        let steps: Vec<StepId> = done.iter().map(|c| c.step).collect();
        let steps_len = steps.len();
        let store = shared.store.clone();
        let stop = stop.clone();
        let handle = self.commits.spawn(async move {
            let result = retry("complete_and_claim", &stop, || {
                store.complete_and_claim(done.clone(), next.clone())
            })
            .await;
            Committed {
                steps,
                reserved,
                result,
            }
        });
        self.reserved += reserved;
        self.recording += steps_len;
        self.committing.insert(handle.id(), runs);
    }
}

/// Takes a completion batch's answer: lets its steps go, starts the steps
/// it claimed, and (serving every run) finishes the runs whose last step it
/// recorded. Returns how many steps it claimed, and how many it was allowed.
async fn committed(
    shared: &Arc<Shared>,
    opts: &WorkerOptions,
    stop: &watch::Receiver<Stop>,
    work: &mut Work,
    seen: &mut Progress,
    joined: Result<(tokio::task::Id, Committed), tokio::task::JoinError>,
) -> Result<(usize, usize), StoreError> {
    let (id, committed) = match joined {
        Ok(joined) => joined,
        Err(err) => match err.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(err) => return Err(StoreError::backend(err)),
        },
    };
    let runs = work.committing.remove(&id).unwrap_or_default();
    work.reserved -= committed.reserved;
    work.recording -= committed.steps.len();
    let (outcomes, claimed) = committed.result?;
    shared.let_go(committed.steps);
    seen.recorded += outcomes
        .iter()
        .filter(|o| matches!(o, crate::store::Outcome::Recorded(_)))
        .count() as u64;
    let counts = (claimed.len(), committed.reserved);
    spawn_claimed(shared, claimed, &mut work.tasks, &mut work.running).await;
    finish_runs(shared, opts, stop, work, runs).await?;
    Ok(counts)
}

/// A worker serving every run finishes the runs whose last step it just
/// recorded; a worker on one run leaves that to its caller. A run with a
/// step here (running, finished or being recorded) has a live step: no need
/// to ask the store.
async fn finish_runs(
    shared: &Shared,
    opts: &WorkerOptions,
    stop: &watch::Receiver<Stop>,
    work: &Work,
    runs: HashSet<RunId>,
) -> Result<(), StoreError> {
    if opts.run.is_some() {
        return Ok(());
    }
    let store = &shared.store;
    for run in runs {
        if work.holds_run(run) {
            continue;
        }
        if !retry("has_live_steps", stop, || store.has_live_steps(run)).await? {
            retry("finish_run", stop, || finish_run(store.as_ref(), run)).await?;
        }
    }
    Ok(())
}

/// The next notice for `run` (any run when `None`); never, without notices.
async fn next_notice(
    notices: &mut Option<tokio::sync::broadcast::Receiver<crate::store::Notice>>,
    run: Option<RunId>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let Some(receiver) = notices else {
        return std::future::pending().await;
    };
    loop {
        match receiver.recv().await {
            Ok(notice) if run.is_none_or(|r| r == notice.run) => return,
            Ok(_) => {}
            // Missed some: look at the queue anyway.
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => {
                *notices = None;
                return std::future::pending().await;
            }
        }
    }
}

/// Hands the worker's running steps back to the queue, trying a few times
/// over about three seconds when the store fails (else they wait for their
/// lease to expire and the leader's rescue).
async fn release_own(
    store: &dyn Store,
    worker: &WorkerId,
    run: Option<RunId>,
) -> Result<Vec<crate::ids::StepId>, StoreError> {
    let mut delay = Duration::from_millis(100);
    for _ in 0..5 {
        let now = Timestamp::now();
        match store
            .release(run, std::slice::from_ref(worker), "worker stopped", now)
            .await
        {
            Err(StoreError::Backend(err)) => {
                tracing::warn!(worker = %worker, error = %err, "cannot hand steps back; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    store
        .release(
            run,
            std::slice::from_ref(worker),
            "worker stopped",
            Timestamp::now(),
        )
        .await
}

/// How long a finished step waits for the next one to finish, so that both
/// are committed in one batch.
const LINGER: Duration = Duration::from_millis(1);

/// How long a batch waits in all for more steps to finish before it is
/// committed; a few percent of a commit's time on a busy database.
const LINGER_MAX: Duration = Duration::from_millis(2);

/// How long a worker keeps retrying a store call that fails for a reason
/// that may pass (a lost connection, a database restarting).
const RETRY_FOR: Duration = Duration::from_secs(600);

/// Calls the store until it answers, backing off from 50 ms to 2 s, while
/// the failure is [`StoreError::Backend`] (one that may pass), for at most
/// [`RETRY_FOR`], and unless the loop is told to abort.
async fn retry<T, F, Fut>(
    what: &str,
    stop: &watch::Receiver<Stop>,
    mut call: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(err @ StoreError::Backend(_))
                if started.elapsed() < RETRY_FOR && *stop.borrow() != Stop::Abort =>
            {
                tracing::warn!(call = what, error = %err, retry_in_ms = delay.as_millis() as u64,
                               "store call failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(err),
        }
    }
}

/// A claim for `free` slots.
fn claim_request(shared: &Shared, opts: &WorkerOptions, free: usize) -> ClaimRequest {
    ClaimRequest {
        worker: shared.worker.clone(),
        run: opts.run,
        limit: u32::try_from(free).unwrap_or(u32::MAX),
        now: Timestamp::now(),
        lease: opts.lease,
        queues: opts.queues.clone(),
        limits: shared.defs.queue_limits().clone(),
    }
}

/// Starts a task for each claimed step, its upstream looked up for all at once.
async fn spawn_claimed(
    shared: &Arc<Shared>,
    claimed: Vec<ClaimedStep>,
    tasks: &mut JoinSet<Finished>,
    running: &mut HashMap<tokio::task::Id, (ClaimedStep, Timestamp)>,
) {
    if claimed.is_empty() {
        return;
    }
    let upstream = resolve_upstream(shared, &claimed).await;
    for (step, upstream) in claimed.into_iter().zip(upstream) {
        let started = Timestamp::now();
        let task = execute(shared.clone(), step.clone(), upstream, started);
        let handle = tasks.spawn(task);
        shared.hold(step.id);
        running.insert(handle.id(), (step, started));
    }
}

/// Turns a joined task into a result to commit; a panic becomes a failure.
/// Adds the step's run to `runs`.
fn finished(
    joined: Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
    running: &mut HashMap<tokio::task::Id, (ClaimedStep, Timestamp)>,
    shared: &Shared,
    runs: &mut HashSet<RunId>,
) -> Finished {
    match joined {
        Ok((id, result)) => {
            if let Some((step, _)) = running.remove(&id) {
                runs.insert(step.run_id);
            }
            result
        }
        Err(err) => {
            let id = err.id();
            let (step, started) = running.remove(&id).expect("every task is tracked");
            runs.insert(step.run_id);
            let message = match err.try_into_panic() {
                Ok(payload) => {
                    let text = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic payload".to_owned());
                    format!("asset panicked: {text}")
                }
                Err(_) => "step task was cancelled".to_owned(),
            };
            let def = shared.defs.asset(&step.target.asset);
            let error = AssetError::msg(message);
            failure(
                &step,
                started,
                def.map(|d| d.as_ref()),
                error,
                Vec::new(),
                &shared.worker,
            )
        }
    }
}

/// The upstream of one claimed step: its targets by dependency, and the
/// latest materializations of every target of its claim.
struct Upstream {
    by_dep: Vec<Vec<AssetPartition>>,
    latest: Arc<HashMap<AssetPartition, MaterializationId>>,
}

/// Looks up the upstream materializations of every step of a claim at once:
/// one store call per chunk of distinct targets rather than one per step (a
/// fan-in of a thousand steps reading one root used to make a thousand reads
/// queue for the reader connections). A step whose upstream cannot be worked
/// out gets the error its execution fails with.
///
/// Run right after the claim: the claimed steps' upstream steps committed
/// before they became available, so what this sees is what each step's own
/// lookup saw before.
async fn resolve_upstream(
    shared: &Shared,
    claimed: &[ClaimedStep],
) -> Vec<Result<Upstream, AssetError>> {
    let now = Timestamp::now();
    let by_step: Vec<Result<Vec<Vec<AssetPartition>>, AssetError>> = claimed
        .iter()
        .map(|step| match shared.defs.asset(&step.target.asset) {
            Some(def) if !def.deps.is_empty() => {
                upstream_targets_by_dep(&shared.defs, def, step.target.partition.as_ref(), now)
                    .map_err(AssetError::fatal)
            }
            _ => Ok(Vec::new()),
        })
        .collect();

    // Each distinct target once, in chunks.
    let mut distinct = HashSet::new();
    let targets: Vec<&AssetPartition> = by_step
        .iter()
        .flatten()
        .flatten()
        .flatten()
        .filter(|t| distinct.insert(*t))
        .collect();
    let mut latest = HashMap::with_capacity(targets.len());
    let mut lookup_error = None;
    for chunk in targets.chunks(LOOKUP_CHUNK) {
        let chunk: Vec<AssetPartition> = chunk.iter().map(|t| (*t).clone()).collect();
        match shared.store.latest_materializations(&chunk).await {
            Ok(records) => latest.extend(records.into_iter().map(|m| (m.target, m.id))),
            Err(err) => {
                lookup_error = Some(err.to_string());
                break;
            }
        }
    }

    let latest = Arc::new(latest);
    by_step
        .into_iter()
        .map(|by_dep| {
            let by_dep = by_dep?;
            match &lookup_error {
                Some(err) if !by_dep.is_empty() => Err(AssetError::new(anyhow::anyhow!(
                    "cannot look up the inputs: {err}"
                ))),
                _ => Ok(Upstream {
                    by_dep,
                    latest: latest.clone(),
                }),
            }
        })
        .collect()
}

/// Runs one claimed step: inputs, the asset, its output. Writes nothing to
/// the store.
async fn execute(
    shared: Arc<Shared>,
    step: ClaimedStep,
    upstream: Result<Upstream, AssetError>,
    started: Timestamp,
) -> Finished {
    let worker = &shared.worker;
    let Some(def) = shared.defs.asset(&step.target.asset).cloned() else {
        let error = AssetError::fatal(anyhow::anyhow!(
            "asset {} is not defined in this worker's code; deploy the code that defines it",
            step.target.asset
        ));
        return failure(&step, started, None, error, Vec::new(), worker);
    };
    tracing::debug!(
        asset = %step.target.asset,
        partition = step.target.partition.as_ref().map(|p| p.as_str()).unwrap_or(""),
        run_id = %step.run_id,
        step_id = %step.id,
        attempt = step.attempt,
        "step started"
    );

    let loaded = match upstream {
        Ok(upstream) => load_inputs(&shared, &def, upstream).await,
        Err(error) => Err(error),
    };
    let (inputs, input_ids) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return failure(&step, started, Some(&def), error, Vec::new(), worker),
    };

    let window = match (&def.partitions, &step.target.partition) {
        (Some(p), Some(k)) => p.time_window(k),
        _ => None,
    };
    let ctx = AssetContext::from_parts(ContextParts {
        asset: def.key.clone(),
        partition: step.target.partition.clone(),
        window,
        run_id: step.run_id,
        step_id: step.id,
        attempt: step.attempt,
        resources: shared.defs.resources().clone(),
    });
    let value = def.compute.call(ctx.clone(), inputs).await;
    let record = ctx.take_record();
    let value = match value {
        Ok(value) => value,
        Err(error) => return failure(&step, started, Some(&def), error, record.events, worker),
    };

    let io = shared.io_for(&def);
    let stored = match io.store(&step.target, &def.output, &value).await {
        Ok(stored) => stored,
        Err(err) => {
            let error = AssetError::new(anyhow::anyhow!("cannot store the value: {err}"));
            return failure(&step, started, Some(&def), error, record.events, worker);
        }
    };

    // The store appends the `materialized` event, naming the materialization
    // it recorded; the data version and the start are on that record, so a
    // step that completes has no `step_started` event (a failed one has).
    let finished_at = Timestamp::now();
    let events = record.events;
    Finished::Done(Box::new(Completion {
        step: step.id,
        attempt: step.attempt,
        worker: worker.clone(),
        materialization: NewMaterialization {
            target: step.target.clone(),
            run_id: step.run_id,
            step_id: step.id,
            attempt: step.attempt,
            started_at: started,
            finished_at,
            trigger: step.trigger,
            user: step.user.clone(),
            code_version: def.code_version.clone(),
            data_version: stored.data_version,
            metadata: record.metadata,
            location: stored.location,
            io_manager: def.io_manager.clone(),
        },
        inputs: input_ids,
        events,
    }))
}

/// Loads every upstream value the step reads, with the ids of the
/// materializations they came from.
async fn load_inputs(
    shared: &Shared,
    def: &AssetDef,
    upstream: Upstream,
) -> Result<(Inputs, Vec<MaterializationId>), AssetError> {
    if def.deps.is_empty() {
        return Ok((Inputs::new(Vec::new()), Vec::new()));
    }
    let by_target = &upstream.latest;

    let mut slots = Vec::with_capacity(def.deps.len());
    let mut ids = Vec::with_capacity(upstream.by_dep.iter().map(Vec::len).sum());
    for (dep, targets) in def.deps.iter().zip(&upstream.by_dep) {
        let up = shared
            .defs
            .asset(&dep.key)
            .expect("dependencies are validated");
        let io = shared.io_for(up);
        let mut values = Vec::with_capacity(targets.len());
        for target in targets {
            let Some(&id) = by_target.get(target) else {
                return Err(AssetError::fatal(anyhow::anyhow!(
                    "upstream {target} has no materialization; materialize it first"
                )));
            };
            let value = io.load(target, &up.output).await.map_err(|err| {
                AssetError::new(anyhow::anyhow!("cannot load input {target}: {err}"))
            })?;
            values.push((target.partition.clone(), value));
            ids.push(id);
        }
        slots.push(InputSlot {
            name: dep.name.clone(),
            values,
        });
    }
    ids.sort_unstable();
    ids.dedup();
    Ok((Inputs::new(slots), ids))
}

/// A failure to record: retryable until the policy's attempts run out.
fn failure(
    step: &ClaimedStep,
    started: Timestamp,
    def: Option<&AssetDef>,
    error: AssetError,
    logged: Vec<NewEvent>,
    worker: &WorkerId,
) -> Finished {
    let now = Timestamp::now();
    let policy = def.map(|d| d.retry.clone()).unwrap_or_default();
    let retry_at = (error.is_retryable() && step.attempt < step.max_attempts).then(|| {
        let delay = policy.delay_after(step.attempt, jitter_unit(step));
        now.saturating_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX))
            .unwrap_or(now)
    });
    let message = error.to_string();
    tracing::debug!(
        asset = %step.target.asset,
        step_id = %step.id,
        attempt = step.attempt,
        retry = retry_at.is_some(),
        error = %message,
        "step failed"
    );
    let mut events = Vec::with_capacity(logged.len() + 2);
    events.push(step_event(
        step,
        started,
        EventKind::StepStarted,
        Level::Info,
        "step started",
    ));
    events.extend(logged);
    let (kind, text) = match retry_at {
        Some(at) => (
            EventKind::StepRetrying,
            format!(
                "attempt {} failed, retrying at {at}: {message}",
                step.attempt
            ),
        ),
        None => (EventKind::StepFailed, format!("failed: {message}")),
    };
    let mut last = step_event(step, now, kind, Level::Error, &text);
    // What the status of the asset partition needs without reading the
    // step: which one failed, and the error it now shows.
    last.data = serde_json::json!({
        "asset": step.target.asset.as_str(),
        "partition": step.target.partition.as_ref().map(|p| p.as_str()),
        "attempt": step.attempt,
        "error": message,
    });
    events.push(last);
    Finished::Failed(Failure {
        step: step.id,
        attempt: step.attempt,
        worker: worker.clone(),
        error: message,
        retry_at,
        finished_at: now,
        events,
    })
}

/// A number in [0, 1) that differs between steps and attempts, for jitter.
fn jitter_unit(step: &ClaimedStep) -> f64 {
    let nanos = Timestamp::now().subsec_nanosecond() as u64;
    let mixed = (step.id.0 as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(nanos)
        .wrapping_add(u64::from(step.attempt) << 32);
    (mixed % 10_000) as f64 / 10_000.0
}

fn step_event(
    step: &ClaimedStep,
    at: Timestamp,
    kind: EventKind,
    level: Level,
    message: &str,
) -> NewEvent {
    NewEvent {
        run_id: step.run_id,
        step_id: Some(step.id),
        at,
        kind,
        level,
        message: message.to_owned(),
        data: serde_json::Value::Null,
    }
}

/// Ends a run whose steps have all ended: `succeeded`, or `failed` if any step
/// failed, was skipped or cancelled. Returns the state it ended in.
pub(crate) async fn finish_run(store: &dyn Store, run: RunId) -> Result<RunState, StoreError> {
    let counts = store.step_counts(run).await?;
    let state = if counts.failed + counts.skipped + counts.cancelled > 0 {
        RunState::Failed
    } else {
        RunState::Succeeded
    };
    let now = Timestamp::now();
    if store
        .set_run_state(run, &[RunState::Running], state, now)
        .await?
    {
        store
            .append_events(vec![NewEvent {
                run_id: run,
                step_id: None,
                at: now,
                kind: EventKind::RunFinished,
                level: if state == RunState::Succeeded {
                    Level::Info
                } else {
                    Level::Error
                },
                message: format!(
                    "run {state}: {} completed, {} failed, {} skipped",
                    counts.completed, counts.failed, counts.skipped
                ),
                data: serde_json::to_value(counts).unwrap_or_default(),
            }])
            .await?;
        return Ok(state);
    }
    let current = store.run(run).await?.map(|r| r.state).unwrap_or(state);
    Ok(current)
}
