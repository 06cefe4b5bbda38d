//! The flights command line as a user meets it: exit codes, messages for bad
//! input, `--json`, and a small materialization from an empty store.

use std::path::Path;
use std::process::{Command, Output};

fn flights(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flights"))
        .args(args)
        .env("FLOWSTONE_STORE", store)
        .env_remove("FLOWSTONE_STORAGE")
        .output()
        .expect("the flights binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command that must fail with exit code 2 and a message containing
/// every one of `needles`.
fn bad_input(store: &Path, args: &[&str], needles: &[&str]) {
    let out = flights(store, args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}\n{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: missing {needle:?}\n{all}"
        );
    }
    assert!(!stderr.contains("panicked"), "{args:?}\n{all}");
}

#[test]
fn bad_input_gets_a_clear_message_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    bad_input(store, &["frobnicate"], &["unrecognized subcommand"]);
    bad_input(
        store,
        &["materialize", "daily_reprot", "-p", "2013-01-01"],
        &["unknown asset daily_reprot", "did you mean daily_report?"],
    );
    bad_input(
        store,
        &["materialize", "daily_report"],
        &["is partitioned", "--partition 2013-01-01"],
    );
    bad_input(
        store,
        &["materialize", "daily_report", "-p", "2013-13-01"],
        &["2013-13-01", "2013-01-01"],
    );
    bad_input(
        store,
        &["materialize", "daily_report", "-p", "2014-02-01"],
        &["outside", "2013-12-31"],
    );
    bad_input(
        store,
        &["materialize", "airlines", "-p", "2013-01-01"],
        &["not partitioned"],
    );
    bad_input(
        store,
        &["materialize", "raw_weather", "-p", "2013-11-03T01:00"],
        &[
            "ambiguous",
            "2013-11-03T01:00-04:00",
            "2013-11-03T01:00-05:00",
        ],
    );
    bad_input(
        store,
        &["materialize", "raw_weather", "-p", "2013-03-10T02:00"],
        &["2013-03-10T02:00"],
    );
    bad_input(
        store,
        &["materialize", "daily_report", "-p", "2013-01-01"],
        &["not materialized", "--with-upstream"],
    );
    bad_input(store, &["backfill", "--from", "2013-01-05"], &["--to"]);
    bad_input(
        store,
        &["backfill", "--from", "2013-01-05", "--to", "2013-01-01"],
        &["2013-01-05"],
    );
    bad_input(store, &["backfill"], &["--all"]);
    bad_input(
        store,
        &["backfill", "--all", "--max-parallel", "0"],
        &["max-parallel"],
    );
    bad_input(store, &["lineage", "sideways", "airlines"], &["sideways"]);
    bad_input(
        store,
        &["lineage", "upstream", "airlines"],
        &["never been materialized"],
    );
    bad_input(store, &["impact", "daily_report"], &["is partitioned"]);
    bad_input(store, &["runs", "show", "xyz"], &["invalid run id"]);
    bad_input(
        store,
        &["runs", "resume", "01890a5d-ac96-774b-bcce-b302099a8057"],
        &["no run"],
    );
    bad_input(store, &["events", "0000"], &["no run id starts with"]);
    bad_input(store, &["show", "airlines"], &["never been materialized"]);
    // Nothing listens on port 1: the error names the server and the reason.
    bad_input(
        store,
        &["--store", "postgres://127.0.0.1:1/flowstone", "status"],
        &[
            "cannot connect to PostgreSQL at postgres://127.0.0.1:1/flowstone",
            "refused",
        ],
    );
    // A malformed URL says so, without the password.
    let url = "postgres://fs:s3cret@127.0.0.1:notaport/flowstone";
    bad_input(
        store,
        &["--store", url, "status"],
        &[
            "invalid PostgreSQL URL",
            "postgres://fs:***@127.0.0.1:notaport/flowstone",
        ],
    );
    let out = flights(store, &["--store", url, "status"]);
    assert!(
        !text(&out).contains("s3cret"),
        "the password is shown\n{}",
        text(&out)
    );
    let file = dir.path().join("not-a-store.txt");
    std::fs::write(&file, "hello").unwrap();
    bad_input(
        store,
        &["--store", file.to_str().unwrap(), "status"],
        &["not-a-store.txt"],
    );
    bad_input(store, &["materialize", "airlines", "--as", " "], &["--as"]);
    // A queue no asset uses, or a malformed name, is refused before the
    // worker registers.
    bad_input(
        store,
        &["worker", "--queues", "default,llm"],
        &[
            "--queues: no asset uses queue \"llm\"",
            "queues in use: default",
        ],
    );
    bad_input(
        store,
        &["worker", "--queues", "no spaces"],
        &["--queues: bad queue name", "letters, digits"],
    );
}

#[test]
fn materialize_show_lineage_and_json_from_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    let out = flights(
        store,
        &[
            "materialize",
            "cleaned_flights",
            "-p",
            "2013-01-02",
            "--with-upstream",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("succeeded"),
        "{}",
        text(&out)
    );

    // 24 hours of weather, the day, the flights, airlines and the cleaned day.
    let out = flights(store, &["--json", "runs", "list"]);
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["steps"]["completed"], 28, "{runs}");

    let out = flights(
        store,
        &["--json", "show", "cleaned_flights", "-p", "2013-01-02"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = &shown["value"]["counts"];
    assert_eq!(
        shown["materialization"]["metadata"]["rows_in"],
        counts["rows_in"]
    );

    let out = flights(
        store,
        &[
            "--json",
            "lineage",
            "upstream",
            "cleaned_flights",
            "-p",
            "2013-01-02",
        ],
    );
    let lineage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(lineage["nodes"].as_array().unwrap().len(), 27, "{lineage}");

    // A second identical backfill of what exists does nothing and says so.
    let range = [
        "backfill",
        "cleaned_flights",
        "--from",
        "2013-01-02",
        "--to",
        "2013-01-02",
    ];
    let out = flights(store, &range);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to do"),
        "{}",
        text(&out)
    );

    let out = flights(store, &["status", "daily_weather"]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("materialized 1"), "{status}");
    assert!(status.contains("missing 364"), "{status}");
}

/// Waits until `path` has a run with some completed steps, or gives up after
/// a minute (a loaded CI machine is slow to start a debug binary).
fn wait_for_progress(store: &Path) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let out = flights(store, &["--json", "runs", "list"]);
        let Ok(runs) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            continue;
        };
        if runs[0]["steps"]["completed"].as_u64().unwrap_or(0) >= 20 {
            return runs[0]["id"].as_str().map(str::to_owned);
        }
    }
    None
}

fn spawn_backfill(store: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_flights"))
        .args([
            "backfill",
            "raw_weather",
            "daily_weather",
            "--from",
            "2013-01-01",
            "--to",
            "2013-01-20",
        ])
        .args(["--max-parallel", "2"])
        .env("FLOWSTONE_STORE", store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the flights binary starts")
}

#[test]
fn a_killed_run_resumes_without_redoing_completed_steps() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    let mut child = spawn_backfill(store);
    let run = wait_for_progress(store);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let run = run.expect("the backfill made progress before it was killed");

    let out = flights(store, &["runs", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("running, no live worker"), "{}", text(&out));

    let out = flights(store, &["--json", "runs", "show", &run]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let completed_before = before["run"]["steps"]["completed"].as_u64().unwrap();

    let out = flights(store, &["--json", "runs", "resume", &run]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let resumed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resumed["run"]["state"], "succeeded", "{resumed}");
    let completed = resumed["run"]["steps"]["completed"].as_u64().unwrap();
    // 20 days × 24 hours (January has no DST change) plus 20 days.
    assert_eq!(completed, 20 * 24 + 20, "{resumed}");
    let recorded = resumed["recorded"].as_u64().unwrap();
    assert!(
        recorded <= completed - completed_before + 2,
        "no completed step ran twice"
    );

    // One materialization per asset partition of the run, none twice.
    let out = flights(store, &["--json", "status", "raw_weather"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["counts"]["materialized"], 480,
        "{}",
        status["counts"]
    );
}

#[test]
fn ctrl_c_stops_gracefully_and_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flights"))
        .args(["backfill", "raw_weather", "--all", "--max-parallel", "2"])
        .env("FLOWSTONE_STORE", store)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_progress(store).expect("the backfill made progress");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let out = loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break child.wait_with_output().unwrap();
        }
        assert!(
            started.elapsed().as_secs() < 60,
            "the run did not stop after Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("interrupted"), "{}", text(&out));
    assert!(stdout.contains("runs resume"), "{}", text(&out));
}

#[test]
fn tokens_are_created_listed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();

    // Reading an empty directory finds no store, and makes none there.
    let empty = store.join("empty");
    std::fs::create_dir(&empty).unwrap();
    bad_input(
        &empty,
        &["tokens", "list"],
        &["no store at", "tokens create"],
    );
    bad_input(&empty, &["status"], &["no store at"]);
    assert!(std::fs::read_dir(&empty).unwrap().next().is_none());

    let out = flights(store, &["tokens", "create", "first", "--right", "read"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = flights(store, &["tokens", "revoke", "first"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The secret alone on stdout, so a script can take it.
    let out = flights(store, &["tokens", "create", "ci", "--right", "launch"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        secret.starts_with("fst_") && secret.len() == 44,
        "{}",
        text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown only this once"));
    let out = flights(
        store,
        &[
            "--json",
            "tokens",
            "create",
            "laptop",
            "--right",
            "read",
            "--expires-in",
            "90d",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["token"]["right"], "read");
    assert!(created["token"]["expires_at"].is_string(), "{created}");
    assert!(created["secret"].as_str().unwrap().starts_with("fst_"));

    bad_input(
        store,
        &["tokens", "create", "ci", "--right", "read"],
        &["a token named \"ci\" exists", "revoke it first"],
    );
    bad_input(
        store,
        &["tokens", "create", "two words", "--right", "read"],
        &["invalid token name", "letters, digits"],
    );
    bad_input(
        store,
        &["tokens", "create", "x", "--right", "admin"],
        &["unknown token right", "`read`", "`launch`"],
    );
    bad_input(store, &["tokens", "create", "x"], &["--right"]);
    bad_input(
        store,
        &[
            "tokens",
            "create",
            "x",
            "--right",
            "read",
            "--expires-in",
            "3 months",
        ],
        &["not a lifetime", "90d"],
    );
    bad_input(
        store,
        &["tokens", "revoke", "nobody"],
        &["no token named \"nobody\"", "tokens list"],
    );
    bad_input(
        store,
        &[
            "tokens",
            "create",
            "x",
            "--right",
            "read",
            "--expires-in",
            "1ms",
        ],
        &["too short", "at least 1m"],
    );
    bad_input(store, &["tokens", "revoke", "first"], &["already revoked"]);

    // The listing shows the start of each secret, never the whole.
    let out = flights(store, &["tokens", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listing.contains(&secret[..12]), "{listing}");
    assert!(!listing.contains(&secret), "{listing}");
    assert!(
        listing.contains("launch") && listing.contains("never"),
        "{listing}"
    );
    assert!(listing.contains("active, expires"), "{listing}");

    // Revoking by the secret (leaked, say) never prints it back.
    let out = flights(store, &["tokens", "revoke", &secret]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("token ci"));
    assert!(!text(&out).contains(&secret[12..]), "{}", text(&out));
    let out = flights(store, &["tokens", "revoke", &secret]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!text(&out).contains(&secret[12..]), "{}", text(&out));
    let out = flights(store, &["tokens", "list"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ci "));
    let out = flights(store, &["--json", "tokens", "list", "--all"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    // A revoked token's name may be used again.
    let out = flights(store, &["tokens", "create", "ci", "--right", "read"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
