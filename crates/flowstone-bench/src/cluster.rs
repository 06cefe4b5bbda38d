//! The PostgreSQL workloads: no-op steps through a shared database and
//! separate `worker` processes, as a cluster runs them.
//!
//! ```text
//! flowstone-bench postgres [--steps N] [--concurrency N] [--workers 1,2] [--rounds N]
//!                          [--dispatch N] [--profile] [--json]
//! flowstone-bench pg-worker URL CONCURRENCY [--profile]    (a worker; internal)
//! flowstone-bench postgres --help                          (the usage; pg-worker too)
//! ```
//!
//! The database is `FLOWSTONE_BENCH_DATABASE_URL`, or else a fresh one made on
//! `postgres://postgres@127.0.0.1:5432` and dropped at the end. Workers are
//! this binary in `pg-worker` mode; SIGTERM drains them, and a profiled worker
//! then prints its store-call timings as one JSON line.
//!
//! Two measures:
//!
//! - throughput: one backfill of `--steps` independent no-op partitions,
//!   queued while the workers wait; steps/s from the run's commit to its end,
//!   and claim-to-start latency per step: from the worker's claim call (the
//!   step's `started_at`) to the asset's first line (recorded in its
//!   materialization's metadata), both on this machine's clock;
//! - dispatch: single-step runs queued one by one while every worker is idle
//!   and waiting on NOTIFY; from the commit of `create_run` to the asset's
//!   first line.
//!
//! Runs are queued the way `Engine::submit` queues them (plan, `create_run`,
//! the run-started event), written out here so that the commit can be timed.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flowstone::partitions::TimeWindowPartitions;
use flowstone::store::{EventKind, Level, NewEvent, NewRun, RunState, Trigger};
use flowstone::{
    AssetBuilder, AssetKey, Definitions, Engine, MemoryIoManager, PartitionSelection,
    PostgresStore, Progress, RunId, RunRequest, Stop, Store, WorkerOptions,
};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use sqlx::Connection as _;
use tokio::sync::watch;

use crate::timed::TimedStore;

/// The server a fresh database is made on.
const SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The first day of the `noop` asset's partitions.
const FIRST_DAY: jiff::civil::Date = jiff::civil::date(1970, 1, 1);

/// The metadata key where an asset notes when it started, in microseconds
/// since the epoch.
const ENTERED: &str = "entered_us";

struct Args {
    steps: usize,
    concurrency: usize,
    workers: Vec<usize>,
    rounds: usize,
    dispatch: usize,
    profile: bool,
    json: bool,
}

/// What `postgres --help` prints.
const USAGE: &str = "\
usage: flowstone-bench postgres [--steps N] [--concurrency N] [--workers N,...] [--rounds N]
                                [--dispatch N] [--profile] [--json]

No-op steps through one PostgreSQL database and separate worker processes. The database is
FLOWSTONE_BENCH_DATABASE_URL, or a fresh one made on postgres://postgres@127.0.0.1:5432 and
dropped at the end.

  --steps N          partitions in the throughput backfill (default 10000)
  --concurrency N    steps at once per worker (default 32)
  --workers N,...    worker processes per measure, one measure each (default 1,2)
  --rounds N         rounds of each measure (default 3)
  --dispatch N       single-step runs in the dispatch measure (default 200)
  --profile          time every store call of the workers
  --json             JSON instead of a report
  -h, --help         this text";

/// What `pg-worker --help` prints.
const WORKER_USAGE: &str = "\
usage: flowstone-bench pg-worker URL CONCURRENCY [--profile]

One worker process of the `postgres` workloads (started by them); SIGTERM drains it.";

impl Args {
    /// The arguments, or `None` when `--help` asked for the usage.
    fn parse(raw: &[String]) -> anyhow::Result<Option<Args>> {
        let mut args = Args {
            steps: 10_000,
            concurrency: 32,
            workers: vec![1, 2],
            rounds: 3,
            dispatch: 200,
            profile: false,
            json: false,
        };
        let mut raw = raw.iter();
        while let Some(flag) = raw.next() {
            let mut value = || raw.next().with_context(|| format!("{flag} needs a value"));
            let number = |text: &str| -> anyhow::Result<usize> {
                match text.trim().parse() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => bail!("{flag} takes a whole number of at least 1, not {text:?}"),
                }
            };
            match flag.as_str() {
                "--steps" => args.steps = number(value()?)?,
                "--concurrency" => args.concurrency = number(value()?)?,
                "--rounds" => args.rounds = number(value()?)?,
                "--dispatch" => args.dispatch = number(value()?)?,
                "--workers" => {
                    args.workers = value()?
                        .split(',')
                        .map(number)
                        .collect::<anyhow::Result<_>>()?;
                }
                "--profile" => args.profile = true,
                "--json" => args.json = true,
                "-h" | "--help" => return Ok(None),
                other => {
                    bail!("unknown argument {other} for `postgres`; `postgres --help` lists them")
                }
            }
        }
        Ok(Some(args))
    }
}

/// `flowstone-bench postgres ...`: the whole measurement.
pub fn main(raw: &[String]) -> anyhow::Result<()> {
    let Some(args) = Args::parse(raw)? else {
        println!("{USAGE}");
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let db = BenchDatabase::open().await?;
        let measured = measure(&args, db.url()).await;
        db.close().await;
        let report = measured?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&args, &report);
        }
        Ok(())
    })
}

/// `flowstone-bench pg-worker URL CONCURRENCY [--profile]`: one worker
/// process, drained by SIGTERM.
pub fn worker_main(raw: &[String]) -> anyhow::Result<()> {
    if raw.iter().any(|a| a == "-h" || a == "--help") {
        println!("{WORKER_USAGE}");
        return Ok(());
    }
    let [url, concurrency, rest @ ..] = raw else {
        bail!("{WORKER_USAGE}");
    };
    let concurrency: usize = concurrency.parse().context("CONCURRENCY")?;
    let profile = rest.iter().any(|a| a == "--profile");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(url).await?);
        let timed = profile.then(|| Arc::new(TimedStore::new(store.clone())));
        let store = match &timed {
            Some(timed) => timed.clone() as Arc<dyn Store>,
            None => store,
        };
        let engine = Engine::new(definitions()?, store);
        let opts = WorkerOptions {
            max_parallel: concurrency,
            run: None,
            lease: SignedDuration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            // As the `worker` command: notices wake idle workers.
            poll: Duration::from_millis(500),
            queues: None,
        };
        let (stop, stop_rx) = watch::channel(Stop::No);
        let (progress, _) = watch::channel(Progress::default());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            term.recv().await;
            stop.send_replace(Stop::Drain);
        });
        engine.serve_worker(opts, stop_rx, progress).await?;
        let report = timed.map(|t| t.report()).unwrap_or(serde_json::Value::Null);
        println!("{report}");
        Ok(())
    })
}

/// `noop`: daily partitions from 1970 for 100 years; `ping`: unpartitioned.
/// Both note when they start and return at once.
fn definitions() -> anyhow::Result<Definitions> {
    let daily = TimeWindowPartitions::daily(&FIRST_DAY.to_string())
        .end("2070-01-01")
        .build()?;
    let noop = |key: &str| {
        AssetBuilder::new(key).compute(|ctx, _inputs| async move {
            ctx.add_metadata(ENTERED, Timestamp::now().as_microsecond());
            flowstone::Result::Ok(())
        })
    };
    Definitions::builder()
        .io_manager("default", MemoryIoManager::new())
        .add_asset(noop("noop").partitions(daily))
        .add_asset(noop("ping"))
        .build()
        .map_err(|errors| anyhow::anyhow!("bad definitions: {errors}"))
}

async fn measure(args: &Args, url: &str) -> anyhow::Result<serde_json::Value> {
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(url).await?);
    let engine = Engine::new(definitions()?, store.clone());
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut configs = Vec::new();
    for (index, &workers) in args.workers.iter().enumerate() {
        let cluster = Workers::start(&me, url, workers, args.concurrency, args.profile)?;
        cluster.wait_registered(&store).await?;
        let mut rounds = Vec::new();
        for _ in 0..args.rounds {
            rounds.push(throughput(&engine, args.steps).await?);
        }
        // Dispatch is measured with the last (largest) set of workers.
        let dispatch = if index + 1 == args.workers.len() {
            dispatch(&engine, args.dispatch).await?
        } else {
            serde_json::Value::Null
        };
        let profiles = cluster.stop()?;
        configs.push(json!({
            "workers": workers,
            "concurrency": args.concurrency,
            "rounds": rounds,
            "dispatch": dispatch,
            "profiles": profiles,
        }));
    }
    Ok(json!({
        "steps": args.steps,
        "load_before": load.trim(),
        "load_after": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "configs": configs,
    }))
}

/// Queues a run the way `Engine::submit` does and returns its id and when
/// `create_run` committed.
async fn queue(engine: &Engine, request: &RunRequest) -> anyhow::Result<(RunId, Timestamp)> {
    let plan = engine.plan(request).await?;
    let store = engine.store();
    let run = store
        .create_run(NewRun {
            id: RunId::new(),
            trigger: Trigger::Api,
            user: "bench".to_owned(),
            description: plan.description.clone(),
            created_at: Timestamp::now(),
            max_parallel: None,
            steps: plan.steps,
        })
        .await?;
    let committed = Timestamp::now();
    store
        .append_events(vec![NewEvent {
            run_id: run.id,
            step_id: None,
            at: committed,
            kind: EventKind::RunStarted,
            level: Level::Info,
            message: format!("run started by bench: {}", run.description),
            data: serde_json::Value::Null,
        }])
        .await?;
    Ok((run.id, committed))
}

/// Waits for the run to end; returns when it ended by the worker's clock.
async fn wait_done(store: &dyn Store, run: RunId, poll: Duration) -> anyhow::Result<Timestamp> {
    let started = Instant::now();
    loop {
        if let Some(record) = store.run(run).await?
            && record.state != RunState::Running
        {
            if record.state != RunState::Succeeded {
                bail!("run {run} ended {}", record.state);
            }
            return Ok(record.finished_at.unwrap_or_else(Timestamp::now));
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("run {run} did not end within 10 minutes");
        }
        tokio::time::sleep(poll).await;
    }
}

/// One backfill of `steps` no-op partitions.
async fn throughput(engine: &Engine, steps: usize) -> anyhow::Result<serde_json::Value> {
    let last = FIRST_DAY
        .checked_add(jiff::Span::new().days(i64::try_from(steps)? - 1))?
        .to_string();
    let request = RunRequest::backfill(
        vec![AssetKey::new("noop")?],
        PartitionSelection::Range {
            from: FIRST_DAY.to_string(),
            to: last,
        },
    )
    .force(true);
    let (run, committed) = queue(engine, &request).await?;
    // The end is the run's `finished_at`, recorded by the worker that
    // finished it, so the poll can be slow: reading a run counts its steps,
    // and reading a 10,000-step run every 5 ms took about a third of the
    // database's CPU from the workers being measured.
    let finished = wait_done(engine.store().as_ref(), run, Duration::from_millis(100)).await?;
    let wall = committed.duration_until(finished).as_secs_f64();

    // Claim-to-start, per step.
    let store = engine.store();
    let claimed: HashMap<_, _> = store
        .steps(run)
        .await?
        .into_iter()
        .filter_map(|s| Some((s.id, s.started_at?)))
        .collect();
    let mut latency_ms = Vec::with_capacity(steps);
    for m in store.materializations_of_run(run).await? {
        let entered = m.metadata.get(ENTERED).and_then(|v| v.as_i64());
        let (Some(entered), Some(claimed)) = (entered, claimed.get(&m.step_id)) else {
            continue;
        };
        latency_ms.push((entered - claimed.as_microsecond()) as f64 / 1000.0);
    }
    let recorded = latency_ms.len();
    Ok(json!({
        "recorded": recorded,
        "wall_s": wall,
        "steps_per_s": recorded as f64 / wall,
        "claim_to_start_ms": percentiles(&mut latency_ms),
    }))
}

/// `n` single-step runs, each queued once the previous one ended and the
/// workers went idle again.
async fn dispatch(engine: &Engine, n: usize) -> anyhow::Result<serde_json::Value> {
    let request = RunRequest::materialize(
        vec![AssetKey::new("ping")?],
        PartitionSelection::Unspecified,
    );
    let store = engine.store();
    let mut latency_ms = Vec::with_capacity(n);
    for _ in 0..n {
        // Idle: the workers' last claim found nothing and they wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (run, committed) = queue(engine, &request).await?;
        wait_done(store.as_ref(), run, Duration::from_millis(2)).await?;
        let entered = store
            .materializations_of_run(run)
            .await?
            .first()
            .and_then(|m| m.metadata.get(ENTERED)?.as_i64())
            .context("the ping step recorded no start")?;
        latency_ms.push((entered - committed.as_microsecond()) as f64 / 1000.0);
    }
    Ok(json!({ "runs": n, "commit_to_start_ms": percentiles(&mut latency_ms) }))
}

fn percentiles(values: &mut [f64]) -> serde_json::Value {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((values.len() as f64 - 1.0) * q).round() as usize;
        values.get(i).copied().unwrap_or(f64::NAN)
    };
    json!({ "p50": at(0.5), "p99": at(0.99), "max": at(1.0) })
}

/// The worker processes of one measurement, killed by pid if not stopped.
struct Workers {
    children: Vec<Child>,
    want: usize,
}

impl Workers {
    fn start(
        me: &Path,
        url: &str,
        n: usize,
        concurrency: usize,
        profile: bool,
    ) -> anyhow::Result<Workers> {
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            let mut command = Command::new(me);
            command.args(["pg-worker", url, &concurrency.to_string()]);
            if profile {
                command.arg("--profile");
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("cannot start {}", me.display()))?;
            children.push(child);
        }
        Ok(Workers { children, want: n })
    }

    /// Waits until all the workers registered in the store.
    async fn wait_registered(&self, store: &Arc<dyn Store>) -> anyhow::Result<()> {
        let started = Instant::now();
        while store.workers().await?.len() < self.want {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the workers did not register within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let their first claim find nothing, so that they wait on notices.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    /// Drains every worker with SIGTERM; returns what each printed.
    fn stop(mut self) -> anyhow::Result<Vec<serde_json::Value>> {
        for child in &self.children {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            if !status.success() {
                bail!("kill -TERM {} failed", child.id());
            }
        }
        let mut printed = Vec::new();
        for child in &mut self.children {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                stdout.read_to_string(&mut out)?;
            }
            let status = child.wait()?;
            if !status.success() {
                bail!("worker {} ended with {status}", child.id());
            }
            printed.push(serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null));
        }
        self.children.clear();
        Ok(printed)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The bench's database: the one `FLOWSTONE_BENCH_DATABASE_URL` names, or a
/// fresh one on the local server, dropped by [`BenchDatabase::close`].
struct BenchDatabase {
    url: String,
    /// Set when the bench made the database: its name, to drop it.
    made: Option<String>,
}

impl BenchDatabase {
    async fn open() -> anyhow::Result<BenchDatabase> {
        if let Ok(url) = std::env::var("FLOWSTONE_BENCH_DATABASE_URL")
            && !url.trim().is_empty()
        {
            return Ok(BenchDatabase { url, made: None });
        }
        let mut conn = sqlx::PgConnection::connect(SERVER)
            .await
            .with_context(|| format!("cannot connect to {SERVER}"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let name = format!("flowstone_bench_{}_{nanos}", std::process::id());
        let create = sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""));
        sqlx::query(create).execute(&mut conn).await?;
        conn.close().await?;
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Ok(BenchDatabase {
            url,
            made: Some(name),
        })
    }

    fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database if the bench made it; a failure is printed.
    async fn close(self) {
        let Some(name) = self.made else { return };
        let dropped = async {
            let mut conn = sqlx::PgConnection::connect(SERVER).await?;
            let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut conn)
                .await?;
            conn.close().await
        };
        if let Err(err) = dropped.await {
            eprintln!("could not drop the bench database {name}: {err}");
        }
    }
}

fn print_report(args: &Args, report: &serde_json::Value) {
    println!(
        "PostgreSQL, {} no-op steps per run, {} round(s); load before {}, after {}",
        args.steps, args.rounds, report["load_before"], report["load_after"]
    );
    println!(
        "{:<8} {:>5} {:>12} {:>10} {:>16}  target",
        "workers", "conc", "steps/s", "wall s", "claim-start p50/p99 ms"
    );
    let configs = report["configs"].as_array().cloned().unwrap_or_default();
    for config in &configs {
        for round in config["rounds"].as_array().into_iter().flatten() {
            let target = if config["workers"] == 2 {
                ">= 10000 steps/s"
            } else {
                ""
            };
            println!(
                "{:<8} {:>5} {:>12.0} {:>10.2} {:>9.2} / {:<9.2} {target}",
                config["workers"],
                config["concurrency"],
                round["steps_per_s"].as_f64().unwrap_or_default(),
                round["wall_s"].as_f64().unwrap_or_default(),
                round["claim_to_start_ms"]["p50"]
                    .as_f64()
                    .unwrap_or_default(),
                round["claim_to_start_ms"]["p99"]
                    .as_f64()
                    .unwrap_or_default(),
            );
        }
        let dispatch = &config["dispatch"];
        if !dispatch.is_null() {
            let ms = &dispatch["commit_to_start_ms"];
            println!(
                "dispatch to {} idle worker(s), {} single-step runs: commit to start p50 {:.2} \
                 ms, p99 {:.2} ms, max {:.2} ms (target p99 < 5 ms)",
                config["workers"],
                dispatch["runs"],
                ms["p50"].as_f64().unwrap_or_default(),
                ms["p99"].as_f64().unwrap_or_default(),
                ms["max"].as_f64().unwrap_or_default(),
            );
        }
        for (i, profile) in config["profiles"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(methods) = profile.as_object() else {
                continue;
            };
            println!();
            println!(
                "worker {i} of {}: store calls over all its runs",
                config["workers"]
            );
            println!(
                "{:<26} {:>7} {:>8} {:>10} {:>10}",
                "method", "calls", "items", "ms", "us/call"
            );
            let mut methods: Vec<_> = methods.iter().collect();
            methods.sort_by(|a, b| {
                b.1["ms"]
                    .as_f64()
                    .partial_cmp(&a.1["ms"].as_f64())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            for (name, t) in methods {
                println!(
                    "{name:<26} {:>7} {:>8} {:>10.1} {:>10.0}",
                    t["calls"].as_u64().unwrap_or_default(),
                    t["items"].as_u64().unwrap_or_default(),
                    t["ms"].as_f64().unwrap_or_default(),
                    t["mean_us"].as_f64().unwrap_or_default(),
                );
            }
        }
    }
}
