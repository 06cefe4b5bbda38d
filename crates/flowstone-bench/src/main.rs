//! `flowstone-bench`: runs the no-op workloads, each in a child process of its
//! own, and the one-asset `noop-run` process, and prints their figures.
//!
//! ```text
//! flowstone-bench [--parallel N] [--runs N] [--noop-runs N] [--only NAME,...] [--json]
//!                 [--profile]
//! flowstone-bench postgres ...       (the PostgreSQL workloads, see `cluster`)
//! flowstone-bench [postgres] --help  (the usage)
//! flowstone-bench --workload NAME [--parallel N] [--profile]   (one run, one JSON line)
//! ```
//!
//! `--profile` wraps the store in [`flowstone_bench::timed::TimedStore`] and
//! prints, per workload, where the store time went (of the last run).
//!
//! The figures are printed, never judged: the targets column only repeats
//! what the issue asks for.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use flowstone_bench::workload::{self, Figures, Workload};
use flowstone_bench::{ScratchDir, median};
use serde_json::json;

/// What the command line asked for.
struct Args {
    /// Steps at once (`RunRequest::max_parallel`).
    parallel: usize,
    /// Child processes per workload.
    runs: usize,
    /// `noop-run` processes per variant (cold and warm).
    noop_runs: usize,
    workloads: Vec<Workload>,
    json: bool,
    /// Time every store call.
    profile: bool,
    /// Set in a child: run this one workload and print its figures.
    child: Option<Workload>,
}

/// What `--help` prints.
const USAGE: &str = "\
usage: flowstone-bench [--parallel N] [--runs N] [--noop-runs N] [--only NAME,...] [--json]
                       [--profile]
       flowstone-bench postgres [OPTIONS]   the PostgreSQL workloads; `postgres --help` lists them

  --parallel N    steps at once in each run (default 64)
  --runs N        child processes per workload (default 3)
  --noop-runs N   noop-run processes per variant, cold and warm (default 20)
  --only NAME,..  these workloads only
  --json          JSON instead of a table
  --profile       time every store call, and print where the time went
  -h, --help      this text

workloads: chain-100, chain-1000, fanout-1000, backfill-365 (chain-N and fanout-N take any N)";

impl Args {
    /// The arguments, or `None` when `--help` asked for the usage.
    fn parse() -> anyhow::Result<Option<Args>> {
        let mut args = Args {
            parallel: 64,
            runs: 3,
            noop_runs: 20,
            workloads: Workload::ALL.to_vec(),
            json: false,
            profile: false,
            child: None,
        };
        let mut raw = std::env::args().skip(1);
        while let Some(flag) = raw.next() {
            let mut value = || raw.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--parallel" => args.parallel = number(&flag, &value()?)?,
                "--runs" => args.runs = number(&flag, &value()?)?,
                "--noop-runs" => args.noop_runs = number(&flag, &value()?)?,
                "--only" => {
                    args.workloads = value()?
                        .split(',')
                        .map(workload_named)
                        .collect::<anyhow::Result<_>>()?;
                }
                "--workload" => args.child = Some(workload_named(&value()?)?),
                "--json" => args.json = true,
                "--profile" => args.profile = true,
                "-h" | "--help" => return Ok(None),
                other => bail!("unknown argument {other}; --help lists the arguments"),
            }
        }
        Ok(Some(args))
    }
}

fn number(flag: &str, text: &str) -> anyhow::Result<usize> {
    match text.parse() {
        Ok(n) if n >= 1 => Ok(n),
        _ => bail!("{flag} takes a whole number of at least 1, not {text:?}"),
    }
}

fn workload_named(name: &str) -> anyhow::Result<Workload> {
    Workload::parse(name.trim()).with_context(|| {
        format!("no workload {name:?}; there are chain-N, fanout-N and backfill-365")
    })
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let result = match raw.first().map(String::as_str) {
        Some("postgres") => flowstone_bench::cluster::main(&raw[1..]),
        Some("pg-worker") => flowstone_bench::cluster::worker_main(&raw[1..]),
        _ => Args::parse().and_then(|args| match args {
            Some(args) => run(args),
            None => {
                println!("{USAGE}");
                Ok(())
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(workload) = args.child {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let figures = runtime.block_on(workload::run(workload, args.parallel, args.profile))?;
        println!("{}", figures.to_json());
        return Ok(());
    }

    // Workloads: each run in a fresh child process, for its own peak memory.
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let mut rows = Vec::new();
    for &workload in &args.workloads {
        let mut runs = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            runs.push(run_child(&me, workload, &args)?);
        }
        rows.push(runs);
    }

    // Whole processes: one materialization each, in a fresh store and a warm one.
    let noop = me.with_file_name("noop-run");
    let single = if noop.exists() {
        Some((
            time_noop_runs(&noop, args.noop_runs, false)?,
            time_noop_runs(&noop, args.noop_runs, true)?,
        ))
    } else {
        eprintln!(
            "note: {} is missing; `cargo build --release -p flowstone-bench` builds it",
            noop.display()
        );
        None
    };

    if args.json {
        let workloads: Vec<_> = rows
            .iter()
            .map(|runs| json!(runs.iter().map(Figures::to_json).collect::<Vec<_>>()))
            .collect();
        let single = single
            .as_ref()
            .map(|(cold, warm)| json!({ "cold": cold, "warm": warm }));
        let out = json!({ "parallel": args.parallel, "workloads": workloads, "noop_run": single });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&args, &rows);
        if args.profile {
            print_profile(&rows);
        }
        if let Some((cold, warm)) = &single {
            print_single(args.noop_runs, cold, warm);
        }
    }
    Ok(())
}

/// Runs one workload in a child process of this program and reads its figures.
fn run_child(me: &Path, workload: Workload, args: &Args) -> anyhow::Result<Figures> {
    let mut command = Command::new(me);
    let parallel = args.parallel.to_string();
    command.args(["--workload", &workload.name(), "--parallel", &parallel]);
    if args.profile {
        command.arg("--profile");
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", me.display()))?;
    if !output.status.success() {
        bail!("workload {} failed ({})", workload.name(), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(line).with_context(|| {
        format!(
            "workload {} printed no figures: {stdout:?}",
            workload.name()
        )
    })?;
    Figures::from_json(&value)
}

/// Times `runs` whole `noop-run` processes, start to exit; `warm` reuses one
/// store (created by a first, untimed run), otherwise each run gets a fresh one.
fn time_noop_runs(noop: &Path, runs: usize, warm: bool) -> anyhow::Result<serde_json::Value> {
    let shared = ScratchDir::new("noop-warm")?;
    if warm {
        noop_once(noop, &shared.store_location())?;
    }
    let mut wall = Vec::with_capacity(runs);
    let mut inside = Vec::with_capacity(runs);
    for _ in 0..runs {
        let fresh;
        let location = if warm {
            shared.store_location()
        } else {
            fresh = ScratchDir::new("noop-cold")?;
            fresh.store_location()
        };
        let started = Instant::now();
        let printed = noop_once(noop, &location)?;
        wall.push(started.elapsed().as_secs_f64() * 1000.0);
        inside.push(printed);
    }
    let field =
        |name: &str| -> Vec<f64> { inside.iter().filter_map(|v| v[name].as_f64()).collect() };
    let spread = |values: &[f64]| {
        json!({
            "min": values.iter().copied().fold(f64::INFINITY, f64::min),
            "median": median(values),
            "max": values.iter().copied().fold(0.0, f64::max),
        })
    };
    Ok(json!({
        "runs": runs,
        "wall_ms": spread(&wall),
        "open_ms": spread(&field("open_ms")),
        "materialize_ms": spread(&field("materialize_ms")),
        "peak_rss_kib": spread(&field("peak_rss_kib")),
    }))
}

fn noop_once(noop: &Path, location: &str) -> anyhow::Result<serde_json::Value> {
    let output = Command::new(noop)
        .arg(location)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", noop.display()))?;
    if !output.status.success() {
        bail!("noop-run failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).with_context(|| format!("noop-run printed {stdout:?}"))
}

fn print_table(args: &Args, rows: &[Vec<Figures>]) {
    println!(
        "{} run(s) per workload, max_parallel {}; times in ms, min / median",
        args.runs, args.parallel
    );
    println!(
        "{:<13} {:>6} {:>15} {:>15} {:>17} {:>15} {:>9}  target",
        "workload", "steps", "plan", "launch", "wall", "steps/s", "peak MiB"
    );
    for runs in rows {
        let Some(first) = runs.first() else { continue };
        let pick = |f: fn(&Figures) -> f64| runs.iter().map(f).collect::<Vec<_>>();
        let total = pick(|f| f.total_ms);
        let rate = pick(Figures::steps_per_sec);
        let rss = pick(|f| f.peak_rss_kib as f64 / 1024.0);
        let target = match first.name.as_str() {
            "fanout-1000" => ">= 20000 steps/s",
            "backfill-365" => "wall < 300 ms",
            _ => "",
        };
        let failed = runs
            .iter()
            .find(|f| f.state != "succeeded" || f.recorded != f.steps);
        let note = failed.map(|f| format!(" ({}, {} recorded)", f.state, f.recorded));
        println!(
            "{:<13} {:>6} {:>15} {:>15} {:>17} {:>15} {:>9.1}  {target}{}",
            first.name,
            first.steps,
            min_median(&pick(|f| f.plan_ms), 1),
            min_median(&pick(|f| f.launch_ms), 1),
            min_median(&total, 1),
            max_median(&rate),
            median(&rss).unwrap_or_default(),
            note.unwrap_or_default(),
        );
    }
    println!("peak MiB is the median over runs; target for every workload: < 15 MiB");
}

/// Store time per method, of each workload's last run, busiest first.
fn print_profile(rows: &[Vec<Figures>]) {
    for figures in rows.iter().filter_map(|runs| runs.last()) {
        let Some(methods) = figures.store_calls.as_object() else {
            continue;
        };
        println!();
        println!(
            "{}: store calls of one run ({:.1} ms wall, launch {:.1} ms included)",
            figures.name, figures.total_ms, figures.launch_ms
        );
        println!(
            "{:<26} {:>7} {:>8} {:>10} {:>10}",
            "method", "calls", "items", "ms", "us/call"
        );
        let mut methods: Vec<_> = methods.iter().collect();
        methods.sort_by(|a, b| b.1["ms"].as_f64().partial_cmp(&a.1["ms"].as_f64()).unwrap());
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

fn print_single(runs: usize, cold: &serde_json::Value, warm: &serde_json::Value) {
    println!();
    println!("noop-run, one asset materialized by a whole process, {runs} runs each (ms)");
    println!(
        "{:<26} {:>8} {:>8} {:>8} {:>10} {:>13} {:>9}",
        "", "min", "median", "max", "open med", "materialize", "peak MiB"
    );
    for (label, v) in [("fresh store each run", cold), ("one store, reused", warm)] {
        println!(
            "{label:<26} {:>8.1} {:>8.1} {:>8.1} {:>10.1} {:>13.1} {:>9.1}  target < 20 ms",
            v["wall_ms"]["min"].as_f64().unwrap_or_default(),
            v["wall_ms"]["median"].as_f64().unwrap_or_default(),
            v["wall_ms"]["max"].as_f64().unwrap_or_default(),
            v["open_ms"]["median"].as_f64().unwrap_or_default(),
            v["materialize_ms"]["median"].as_f64().unwrap_or_default(),
            v["peak_rss_kib"]["median"].as_f64().unwrap_or_default() / 1024.0,
        );
    }
}

fn min_median(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    format!(
        "{min:.decimals$} / {:.decimals$}",
        median(values).unwrap_or_default()
    )
}

/// For rates, where the best run is the highest.
fn max_median(values: &[f64]) -> String {
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("{max:.0} / {:.0}", median(values).unwrap_or_default())
}
