//! Runs this server works on, and the keeper that ends runs whose last steps
//! another loop took.
//!
//! A run launched or resumed through the API is worked on by its own loop
//! (as `materialize` does at the command line), with the run's own
//! `max_parallel`; its task is owned here, wakes the event feed whenever the
//! run reports progress, and is drained on shutdown. The in-process worker
//! over all runs may take steps of any run too; when it takes a run's last
//! step, nobody would mark the run ended, so the keeper watches the feed and
//! ends such runs.

// FIXME(one queue, two loops): a run launched here is worked on by its own
// loop (with its max_parallel) and the all-runs worker may claim its steps
// too, so up to max_parallel + the worker's parallelism of its steps run at
// once; and the all-runs worker claims steps of interrupted runs as well
// (the store's claim does not look at the run's state). A run-state check
// in the claim, or launching through the queue only with per-run limits
// enforced by the claim, would resolve both (issue 3's worker work).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flowstone_core::store::EventKind;
use flowstone_core::{Engine, RunHandle, RunId};
use tokio::sync::watch;

use crate::AppState;
use crate::feed::EventFeed;

/// Runs worked on by this process.
pub(crate) struct Runs {
    engine: Engine,
    feed: EventFeed,
    active: Arc<Mutex<HashMap<RunId, Active>>>,
}

struct Active {
    stopper: watch::Sender<flowstone_core::Stop>,
    task: tokio::task::JoinHandle<()>,
}

impl Runs {
    pub(crate) fn new(engine: Engine, feed: EventFeed) -> Self {
        Runs {
            engine,
            feed,
            active: Arc::default(),
        }
    }

    /// Owns a run's loop until it ends.
    pub(crate) fn adopt(&self, handle: RunHandle) {
        let run = handle.run_id();
        let stopper = handle.stopper();
        let mut progress = handle.progress();
        let feed = self.feed.clone();
        let active = self.active.clone();
        // Held across the spawn, so the task's removal comes after the insert.
        let mut map = lock(&self.active);
        let task = tokio::spawn(async move {
            let wait = handle.wait();
            tokio::pin!(wait);
            // Progress means something was committed: read it at once.
            let outcome = loop {
                tokio::select! {
                    outcome = &mut wait => break outcome,
                    changed = progress.changed() => {
                        if changed.is_ok() {
                            feed.wake();
                        }
                    }
                }
            };
            feed.wake();
            match outcome {
                Ok(outcome) => tracing::info!(target: "flowstone::server", run_id = %run,
                                              state = %outcome.run.state, "run ended"),
                Err(err) => tracing::error!(target: "flowstone::server", run_id = %run,
                                            error = %err, "run failed"),
            }
            lock(&active).remove(&run);
        });
        map.insert(run, Active { stopper, task });
    }

    /// Whether this process works on `run` with its own loop.
    pub(crate) fn is_active(&self, run: RunId) -> bool {
        lock(&self.active).contains_key(&run)
    }

    /// Stops claiming in every run, then waits for them to record what runs.
    pub(crate) async fn drain(&self) {
        let tasks: Vec<Active> = lock(&self.active).drain().map(|(_, a)| a).collect();
        for active in &tasks {
            active.stopper.send_replace(flowstone_core::Stop::Drain);
        }
        for active in tasks {
            let _ = active.task.await;
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// A poisoned lock only means a task panicked while holding it; the map
/// itself is still sound.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Ends runs whose steps have all ended when no loop of this process owns
/// them; stops with `stop`.
pub(crate) fn spawn_keeper(
    state: AppState,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut events = state.inner.feed.subscribe();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = stop.wait_for(|s| *s) => return,
            };
            let event = match event {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let ends_a_step = matches!(
                event.kind,
                EventKind::Materialized | EventKind::StepFailed | EventKind::StepSkipped
            );
            let runs = &state.inner.runs;
            if !ends_a_step || runs.is_active(event.run_id) {
                continue;
            }
            match runs.engine().finish_if_done(event.run_id).await {
                Ok(Some(run_state)) => tracing::debug!(target: "flowstone::server",
                    run_id = %event.run_id, state = %run_state, "run ended by the keeper"),
                Ok(None) => {}
                Err(err) => tracing::warn!(target: "flowstone::server",
                    run_id = %event.run_id, error = %err, "cannot end a run"),
            }
        }
    })
}
