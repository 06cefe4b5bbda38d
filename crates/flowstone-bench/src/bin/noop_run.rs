//! One whole materialization as a process: opens the store at the path given
//! as the only argument, defines one no-op asset, materializes it once and
//! exits. `flowstone-bench` times this process from start to exit; what it
//! prints (one JSON line) splits the time inside the process.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use flowstone::{Definitions, Engine, MemoryIoManager, SqliteStore, Store};
use flowstone_bench::workload::noop;

/// What `--help` prints.
const USAGE: &str = "\
usage: noop-run STORE_PATH

Opens (or makes) the SQLite store at STORE_PATH, materializes one no-op asset once, and
prints one JSON line of timings; flowstone-bench starts it.";

fn main() -> ExitCode {
    let started = Instant::now();
    let Some(location) = std::env::args().nth(1) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    // Not a store path: `--help` would otherwise make a store named so.
    if location == "-h" || location == "--help" {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(materialize_once(&location, started)) {
        Ok(figures) => {
            println!("{figures}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn materialize_once(location: &str, started: Instant) -> anyhow::Result<serde_json::Value> {
    let runtime_ms = ms(started);

    // Open: connect, and create or check the schema.
    let opened = Instant::now();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(location)
            .await
            .context("cannot open the store")?,
    );
    let open_ms = ms(opened);

    // Materialize: plan, create the run, claim, execute, commit, finish.
    let defs = Definitions::builder()
        .io_manager("default", MemoryIoManager::new())
        .add_asset(noop("only"))
        .build()
        .map_err(|errors| anyhow::anyhow!("bad definitions: {errors}"))?;
    let engine = Engine::new(defs, store);
    let materialized = Instant::now();
    let outcome = engine
        .materialize("only", None)
        .await
        .context("cannot materialize")?;
    let materialize_ms = ms(materialized);

    Ok(serde_json::json!({
        "runtime_ms": runtime_ms,
        "open_ms": open_ms,
        "materialize_ms": materialize_ms,
        "in_process_ms": ms(started),
        "recorded": outcome.recorded,
        "peak_rss_kib": flowstone_bench::peak_rss_kib(),
    }))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
