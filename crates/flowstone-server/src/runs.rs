//! Runs this server works on.
//!
//! A run launched or resumed through the API is worked on by its own loop
//! (as `materialize` does at the command line), with the run's own
//! `max_parallel`; its task is owned here, wakes the event feed whenever the
//! run reports progress, and is drained on shutdown. The in-process worker
//! over all runs, and workers elsewhere, may take steps of the run too: the
//! run's `max_parallel` is its cap in the store, which every claim respects,
//! so together they never run more of its steps at once. The worker over all
//! runs ends the runs whose last step it records (the leader's maintenance
//! ends any left behind).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flowstone_core::{RunHandle, RunId};
use tokio::sync::watch;

use crate::feed::EventFeed;

/// Runs worked on by this process.
pub(crate) struct Runs {
    feed: EventFeed,
    active: Arc<Mutex<HashMap<RunId, Active>>>,
}

struct Active {
    stopper: watch::Sender<flowstone_core::Stop>,
    task: tokio::task::JoinHandle<()>,
}

impl Runs {
    pub(crate) fn new(feed: EventFeed) -> Self {
        Runs {
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
}

/// A poisoned lock only means a task panicked while holding it; the map
/// itself is still sound.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
