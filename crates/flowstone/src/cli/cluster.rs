//! `worker`, `daemon` and `workers`: the commands of a FlowStone cluster.
//!
//! A worker serves every run in the store until it is stopped. The first
//! SIGTERM or Ctrl-C drains it: it claims nothing more and lets running steps
//! finish and be recorded, for at most `--drain-timeout`; then (or at a second
//! signal) the steps still running are handed back to the queue for another
//! worker. Either way no step is lost, so workers can be restarted one by one.

use std::time::Duration;

use flowstone_core::maintenance::{LEADER_LEASE, MaintenanceOptions};
use flowstone_core::{Progress, Stop, WorkerOptions};
use tokio::sync::watch;

use super::args::{DaemonArgs, MaintenanceArgs, WorkerArgs};
use super::progress::Interrupts;
use super::{Ctx, EXIT_OK, Failure, usage};

pub(crate) async fn worker(ctx: &Ctx, args: WorkerArgs) -> Result<u8, Failure> {
    let queues = args
        .queues
        .as_deref()
        .map(|queues| served_queues(&ctx.engine.definitions().queues(), queues))
        .transpose()?;
    let concurrency = args
        .concurrency
        .map_or_else(flowstone_core::default_parallelism, usize::from);
    let lease = args.lease;
    let heartbeat = Duration::try_from(lease / 4)
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(50));
    let opts = WorkerOptions {
        max_parallel: concurrency,
        run: None,
        lease,
        heartbeat,
        // Idle workers wake on the store's notices (LISTEN/NOTIFY on
        // PostgreSQL); polling only covers what those miss.
        poll: Duration::from_millis(500),
        queues: queues.clone(),
    };
    let serving = match &queues {
        Some(queues) => format!("queue(s) {}", queues.join(", ")),
        None => "every queue".to_owned(),
    };
    eprintln!(
        "worker pid {} on {} serving {serving} of {} with concurrency {concurrency}; SIGTERM \
         or Ctrl-C drains it",
        std::process::id(),
        flowstone_core::host_name(),
        ctx.store_location,
    );

    let maintainer = (!args.no_maintenance).then(|| spawn_maintenance(ctx, &args.maintenance));
    let (stop, stop_rx) = watch::channel(Stop::No);
    let (progress, progress_rx) = watch::channel(Progress::default());
    let mut work = Box::pin(ctx.engine.serve_worker(opts, stop_rx, progress));
    let mut interrupts = Interrupts::new();
    let drain_for = Duration::try_from(args.drain_timeout).unwrap_or(Duration::from_secs(30));
    let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            () = interrupts.recv() => {
                if deadline.is_none() {
                    eprintln!(
                        "draining: claiming nothing more; running steps have {:#} to finish \
                         (signal again to hand them back now)",
                        args.drain_timeout
                    );
                    stop.send_replace(Stop::Drain);
                    deadline = Some(Box::pin(tokio::time::sleep(drain_for)));
                } else {
                    eprintln!("handing running steps back to the queue");
                    stop.send_replace(Stop::Abort);
                }
            }
            () = async { deadline.as_mut().expect("checked").await }, if deadline.is_some() => {
                eprintln!(
                    "drain timeout ({:#}) reached: handing running steps back to the queue",
                    args.drain_timeout
                );
                stop.send_replace(Stop::Abort);
                deadline = None;
            }
        }
    };
    if let Some((stop, task)) = maintainer {
        stop.send_replace(Stop::Drain);
        let _ = task.await;
    }
    result?;
    let done = progress_rx.borrow().clone();
    eprintln!(
        "worker stopped: recorded {} materialization(s), {} step(s) failed",
        done.recorded, done.failed
    );
    Ok(EXIT_OK)
}

/// The queues of `--queues`, checked against those the assets use.
fn served_queues(known: &[&str], asked: &[String]) -> Result<Vec<String>, Failure> {
    let mut queues: Vec<String> = Vec::new();
    for queue in asked {
        let queue = queue.trim();
        if let Err(message) = flowstone_core::asset::check_queue_name(queue) {
            return Err(usage(format!("--queues: {message}")));
        }
        if !known.contains(&queue) {
            return Err(usage(format!(
                "--queues: no asset uses queue {queue:?}; queues in use: {}",
                known.join(", ")
            )));
        }
        if !queues.iter().any(|q| q == queue) {
            queues.push(queue.to_owned());
        }
    }
    Ok(queues)
}

pub(crate) async fn daemon(ctx: &Ctx, args: DaemonArgs) -> Result<u8, Failure> {
    eprintln!(
        "daemon pid {} on {} maintaining {}; SIGTERM or Ctrl-C stops it",
        std::process::id(),
        flowstone_core::host_name(),
        ctx.store_location,
    );
    // Listening before the work starts: an early SIGTERM stops it cleanly.
    let mut interrupts = Interrupts::new();
    let (stop, task) = spawn_maintenance(ctx, &args.maintenance);
    interrupts.recv().await;
    stop.send_replace(Stop::Drain);
    let _ = task.await;
    eprintln!("daemon stopped");
    Ok(EXIT_OK)
}

pub(crate) async fn workers(ctx: &Ctx) -> Result<u8, Failure> {
    let store = ctx.engine.store();
    let workers = store.workers().await?;
    let leader = store.lease(LEADER_LEASE).await?;
    ctx.printer.workers(&workers, leader.as_ref());
    Ok(EXIT_OK)
}

fn spawn_maintenance(
    ctx: &Ctx,
    args: &MaintenanceArgs,
) -> (watch::Sender<Stop>, tokio::task::JoinHandle<()>) {
    let lease = args.leader_lease;
    let every = Duration::try_from(lease / 3)
        .unwrap_or(Duration::from_secs(5))
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    let opts = MaintenanceOptions {
        lease,
        every,
        retention: args.retention,
        ..MaintenanceOptions::default()
    };
    let (stop, stop_rx) = watch::channel(Stop::No);
    let engine = ctx.engine.clone();
    let task = tokio::spawn(async move { engine.maintain(opts, stop_rx).await });
    (stop, task)
}
