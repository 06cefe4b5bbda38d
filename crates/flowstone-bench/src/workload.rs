//! The workloads: asset graphs of no-op assets, run once each through a fresh
//! SQLite store on disk.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use flowstone::partitions::TimeWindowPartitions;
use flowstone::{
    AssetBuilder, Definitions, Engine, Launch, MemoryIoManager, PartitionSelection, RunRequest,
    SqliteStore, Store,
};
use serde_json::json;

use crate::ScratchDir;
use crate::timed::TimedStore;

/// A named asset graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// A linear chain of this many unpartitioned assets.
    Chain(usize),
    /// One root, this many middle assets reading it, one sink reading them all.
    Fanout(usize),
    /// Three daily-partitioned assets in a chain over 2013 (365 days each).
    Backfill365,
}

impl Workload {
    /// Every workload, in the order the table shows them.
    pub const ALL: [Workload; 4] = [
        Workload::Chain(100),
        Workload::Chain(1000),
        Workload::Fanout(1000),
        Workload::Backfill365,
    ];

    pub fn name(self) -> String {
        match self {
            Workload::Chain(n) => format!("chain-{n}"),
            Workload::Fanout(n) => format!("fanout-{n}"),
            Workload::Backfill365 => "backfill-365".to_owned(),
        }
    }

    /// The workload called `name`; `chain-N` and `fanout-N` take any N >= 1.
    pub fn parse(name: &str) -> Option<Workload> {
        let sized = |prefix: &str| {
            let n: usize = name.strip_prefix(prefix)?.parse().ok()?;
            (n >= 1).then_some(n)
        };
        if name == "backfill-365" {
            Some(Workload::Backfill365)
        } else if let Some(n) = sized("chain-") {
            Some(Workload::Chain(n))
        } else {
            sized("fanout-").map(Workload::Fanout)
        }
    }

    /// The assets, each with a compute that returns `Ok(())` at once.
    pub fn definitions(self) -> anyhow::Result<Definitions> {
        let mut builder = Definitions::builder().io_manager("default", MemoryIoManager::new());
        match self {
            Workload::Chain(n) => {
                builder = builder.add_asset(noop("c00000"));
                for i in 1..n {
                    let asset = noop(&format!("c{i:05}")).dep::<()>(format!("c{:05}", i - 1));
                    builder = builder.add_asset(asset);
                }
            }
            Workload::Fanout(n) => {
                builder = builder.add_asset(noop("root"));
                let mut sink = noop("sink");
                for i in 0..n {
                    let key = format!("m{i:05}");
                    builder = builder.add_asset(noop(&key).dep::<()>("root"));
                    sink = sink.dep::<()>(key);
                }
                builder = builder.add_asset(sink);
            }
            Workload::Backfill365 => {
                let daily = || {
                    TimeWindowPartitions::daily("2013-01-01")
                        .end("2014-01-01")
                        .build()
                };
                builder = builder
                    .add_asset(noop("raw").partitions(daily()))
                    .add_asset(noop("clean").partitions(daily()).dep::<()>("raw"))
                    .add_asset(noop("report").partitions(daily()).dep::<()>("clean"));
            }
        }
        builder
            .build()
            .map_err(|errors| anyhow::anyhow!("bad workload definitions: {errors}"))
    }
}

/// An asset that computes nothing.
pub fn noop(key: &str) -> AssetBuilder {
    AssetBuilder::new(key).compute(|_ctx, _inputs| async { flowstone::Result::Ok(()) })
}

/// What one run of a workload measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    pub name: String,
    /// Steps in the run's plan.
    pub steps: u64,
    /// Materializations the worker recorded.
    pub recorded: u64,
    /// The state the run ended in.
    pub state: String,
    /// Opening the store (schema included) and building the definitions.
    pub setup_ms: f64,
    /// Planning alone (a dry plan of the same request, before the run).
    pub plan_ms: f64,
    /// `Engine::launch`: planning, `create_run` and the run-started event.
    pub launch_ms: f64,
    /// From launch to the run's outcome: what `Engine::run` takes.
    pub total_ms: f64,
    /// The process's peak resident set size at the end.
    pub peak_rss_kib: u64,
    /// Time per store method (see [`crate::timed`]) when profiled, else null.
    pub store_calls: serde_json::Value,
}

impl Figures {
    /// Recorded steps per second of `total_ms`.
    pub fn steps_per_sec(&self) -> f64 {
        self.recorded as f64 / (self.total_ms / 1000.0).max(f64::MIN_POSITIVE)
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "steps": self.steps,
            "recorded": self.recorded,
            "state": self.state,
            "setup_ms": self.setup_ms,
            "plan_ms": self.plan_ms,
            "launch_ms": self.launch_ms,
            "total_ms": self.total_ms,
            "steps_per_sec": self.steps_per_sec(),
            "peak_rss_kib": self.peak_rss_kib,
            "store_calls": self.store_calls,
        })
    }

    /// Reads what [`Figures::to_json`] wrote.
    pub fn from_json(value: &serde_json::Value) -> anyhow::Result<Figures> {
        let num = |field: &str| {
            value[field]
                .as_f64()
                .with_context(|| format!("figure {field} missing in {value}"))
        };
        let text = |field: &str| {
            value[field]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("figure {field} missing in {value}"))
        };
        Ok(Figures {
            name: text("name")?,
            steps: num("steps")? as u64,
            recorded: num("recorded")? as u64,
            state: text("state")?,
            setup_ms: num("setup_ms")?,
            plan_ms: num("plan_ms")?,
            launch_ms: num("launch_ms")?,
            total_ms: num("total_ms")?,
            peak_rss_kib: num("peak_rss_kib")? as u64,
            store_calls: value["store_calls"].clone(),
        })
    }
}

/// Runs `workload` once as a backfill of everything, with at most
/// `max_parallel` steps at once, in a fresh store under a scratch directory;
/// `profile` times every store call.
///
/// # Errors
///
/// When the store cannot be opened or the run fails to start or finish.
pub async fn run(
    workload: Workload,
    max_parallel: usize,
    profile: bool,
) -> anyhow::Result<Figures> {
    let scratch = ScratchDir::new(&workload.name()).context("cannot create a scratch dir")?;

    // Setup: a real WAL database file, and the definitions.
    let started = Instant::now();
    let sqlite: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&scratch.store_location())
            .await
            .context("cannot open the store")?,
    );
    let timed = profile.then(|| Arc::new(TimedStore::new(sqlite.clone())));
    let store = match &timed {
        Some(timed) => timed.clone() as Arc<dyn Store>,
        None => sqlite,
    };
    let engine = Engine::new(workload.definitions()?, store);
    let setup_ms = ms(started);

    // Planning alone, for the breakdown; the launch below plans again.
    let request =
        || RunRequest::backfill(vec![], PartitionSelection::All).max_parallel(max_parallel);
    let started = Instant::now();
    engine.plan(&request()).await.context("cannot plan")?;
    let plan_ms = ms(started);

    // The run: launch and wait are what `Engine::run` does, timed apart.
    let started = Instant::now();
    let launch = engine
        .launch(request())
        .await
        .context("cannot launch the run")?;
    let launch_ms = ms(started);
    let Launch::Started { run, handle, .. } = launch else {
        anyhow::bail!("the fresh store has nothing to do for {}", workload.name());
    };
    let outcome = handle.wait().await.context("the run failed")?;
    let total_ms = ms(started);

    Ok(Figures {
        name: workload.name(),
        steps: run.steps.total(),
        recorded: outcome.recorded,
        state: outcome.run.state.to_string(),
        setup_ms,
        plan_ms,
        launch_ms,
        total_ms,
        peak_rss_kib: crate::peak_rss_kib(),
        store_calls: timed.map(|t| t.report()).unwrap_or_default(),
    })
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for workload in Workload::ALL {
            assert_eq!(Workload::parse(&workload.name()), Some(workload));
        }
        assert_eq!(Workload::parse("chain-7"), Some(Workload::Chain(7)));
        assert_eq!(Workload::parse("chain-0"), None);
        assert_eq!(Workload::parse("tree-3"), None);
    }

    #[test]
    fn definitions_have_the_promised_sizes() {
        assert_eq!(Workload::Chain(100).definitions().unwrap().len(), 100);
        assert_eq!(Workload::Fanout(1000).definitions().unwrap().len(), 1002);
        assert_eq!(Workload::Backfill365.definitions().unwrap().len(), 3);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_small_chain_runs_to_success() {
        let figures = run(Workload::Chain(5), 4, true).await.unwrap();
        // Each step is recorded by one complete_and_claim, which also claims the next.
        assert_eq!(figures.store_calls["complete_and_claim"]["calls"], 5);
        assert_eq!((figures.steps, figures.recorded), (5, 5));
        assert_eq!(figures.state, "succeeded");
        assert_eq!(Figures::from_json(&figures.to_json()).unwrap(), figures);
    }
}
