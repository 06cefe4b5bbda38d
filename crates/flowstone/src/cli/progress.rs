//! Watching a run from the terminal: a progress bar (steps done / failed /
//! total, rate, ETA) on stderr when it is a terminal, and Ctrl-C handling.
//!
//! The first Ctrl-C (or SIGTERM) stops claiming steps and lets running ones
//! finish; the second abandons them and hands them back to the queue. Either way the run is
//! left `interrupted`, and `runs resume` continues it.

use std::io::IsTerminal;
use std::time::Duration;

use flowstone_core::{EngineError, RunHandle, RunOutcome};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) async fn watch(
    handle: RunHandle,
    total: u64,
    show: bool,
) -> Result<RunOutcome, EngineError> {
    let show = show && std::io::stderr().is_terminal();
    let bar = if show {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps, {msg}, eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(bar)
    } else {
        None
    };

    // One listener for the whole run: a signal that lands while the loop is
    // busy is kept for the next turn (a fresh `ctrl_c()` per turn would drop it).
    let mut interrupt = Interrupts::new();
    let mut progress = handle.progress();
    let stopper = handle.stopper();
    let mut wait = Box::pin(handle.wait());
    let mut interrupts = 0;
    loop {
        tokio::select! {
            outcome = &mut wait => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                return outcome;
            }
            changed = progress.changed() => {
                if changed.is_err() {
                    // The worker ended; the outcome follows.
                    continue;
                }
                if let Some(bar) = &bar {
                    let p = progress.borrow().clone();
                    let steps = p.steps;
                    let ended = steps.completed + steps.failed + steps.skipped + steps.cancelled;
                    bar.set_position(ended);
                    let seconds = bar.elapsed().as_secs_f64().max(0.001);
                    bar.set_message(format!(
                        "{} failed, {} running, {:.0} steps/s",
                        steps.failed + steps.skipped,
                        steps.running,
                        p.recorded as f64 / seconds
                    ));
                }
            }
            () = interrupt.recv() => {
                interrupts += 1;
                let message = if interrupts == 1 {
                    stopper.send_replace(flowstone_core::Stop::Drain);
                    "stopping: letting running steps finish (Ctrl-C again to abandon them)"
                } else {
                    stopper.send_replace(flowstone_core::Stop::Abort);
                    "abandoning running steps; they go back to the queue"
                };
                match &bar {
                    Some(bar) => bar.println(message),
                    None => eprintln!("{message}"),
                }
            }
        }
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, as one stream; both stop a run gracefully.
pub(super) struct Interrupts {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Interrupts {
    pub(super) fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Interrupts {
                int: signal(SignalKind::interrupt()).ok(),
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Interrupts {}
    }

    /// The next signal; pending forever if none can be listened to.
    pub(super) async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let int = async {
                match &mut self.int {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let term = async {
                match &mut self.term {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = int => {}
                _ = term => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
