//! Every binary and subcommand prints its usage on `--help` (and `-h`),
//! exits 0, and does nothing else.

use std::path::Path;
use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_flowstone-bench");
const NOOP_RUN: &str = env!("CARGO_BIN_EXE_noop-run");
const SERVE_BENCH: &str = env!("CARGO_BIN_EXE_serve-bench");

/// Runs `bin` with `args` in `dir`; returns its exit code, stdout and
/// stderr.
fn run(dir: &Path, bin: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env_remove("FLOWSTONE_BENCH_DATABASE_URL")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Regression: `flowstone-bench postgres --help` failed with "unknown
/// argument", and `noop-run --help` would have made a store named `--help`.
#[test]
fn every_binary_and_subcommand_prints_its_usage_on_help() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, args, says) in [
        (BENCH, &["--help"][..], "flowstone-bench postgres"),
        (BENCH, &["-h"], "--noop-runs"),
        (BENCH, &["postgres", "--help"], "--steps N"),
        (BENCH, &["postgres", "-h"], "--dispatch N"),
        (BENCH, &["postgres", "--steps", "5", "--help"], "--workers"),
        (BENCH, &["pg-worker", "--help"], "pg-worker URL CONCURRENCY"),
        (NOOP_RUN, &["--help"], "noop-run STORE_PATH"),
        (NOOP_RUN, &["-h"], "noop-run STORE_PATH"),
        (SERVE_BENCH, &["--help"], "--serve-only"),
        (SERVE_BENCH, &["-h"], "--flights PATH"),
    ] {
        let (code, stdout, stderr) = run(dir.path(), bin, args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(
            stdout.starts_with("usage: ") && stdout.contains(says),
            "{args:?}: {stdout}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "--help made files: {left:?}");
}

#[test]
fn unknown_arguments_point_to_help() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, args) in [
        (BENCH, &["--nope"][..]),
        (BENCH, &["postgres", "--nope"]),
        (SERVE_BENCH, &["--nope"]),
    ] {
        let (code, _, stderr) = run(dir.path(), bin, args);
        assert_ne!(code, Some(0), "{args:?}");
        assert!(stderr.contains("--help"), "{args:?}: {stderr}");
    }
}
