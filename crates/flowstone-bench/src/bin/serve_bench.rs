//! Figures for the dashboard server: time until `serve` answers, its idle
//! memory with the flights definitions, request latency of the asset list
//! and of a million-partition asset, and the time from a step completing to
//! its event reaching an event-stream client.
//!
//! ```text
//! cargo build --release -p flights
//! cargo run --release -p flowstone-bench --bin serve-bench -- \
//!     [--store DIR] [--flights PATH] [--serve-only]
//! ```
//!
//! `--store` names a store filled by the main job (`flights backfill --all`);
//! without it a temporary one is filled first. The bench forces a backfill
//! of `raw_weather` through the server, so give it a copy of a store you
//! keep. `--flights` names another build's binary, to compare builds with
//! the same client; `--serve-only` leaves out the in-process part. Only
//! loopback is used.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flowstone::partitions::TimeWindowPartitions;
use flowstone::{AssetBuilder, Definitions, Engine, MemoryIoManager, SqliteStore, Store};
use flowstone_server::{ServeOptions, Server};

/// What `--help` prints.
const USAGE: &str = "\
usage: serve-bench [--store DIR] [--flights PATH] [--serve-only]

Figures for `flights serve`: time until the port answers, idle RSS, request latency, and the
time from a step completing to its event at a stream client. Only loopback is used.

  --store DIR       a store filled by the main job (the bench forces a backfill of
                    raw_weather in it: give a copy); without it a temporary one is filled
  --flights PATH    the flights binary to measure (default: beside this one; build it with
                    `cargo build --release -p flights`)
  --serve-only      leave out the in-process part
  -h, --help        this text";

fn main() -> anyhow::Result<()> {
    let mut store: Option<PathBuf> = None;
    let mut flights: Option<PathBuf> = None;
    let mut serve_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--store" => store = args.next().map(PathBuf::from),
            "--flights" => flights = args.next().map(PathBuf::from),
            "--serve-only" => serve_only = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!(
                "unknown argument {other:?}; give --store DIR, --flights PATH and/or \
                 --serve-only (--help says more)"
            ),
        }
    }
    let flights = match flights {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has a directory")?
            .join("flights"),
    };
    if !flights.exists() {
        bail!(
            "no flights binary at {}; build it with `cargo build --release -p flights`, or give \
             --flights PATH",
            flights.display()
        );
    }

    let _temp;
    let store = match store {
        Some(dir) => dir,
        None => {
            let dir = tempfile_dir()?;
            println!("filling a store with the main job (flights backfill --all)...");
            let status = Command::new(&flights)
                .args(["backfill", "--all", "--quiet"])
                .env("FLOWSTONE_STORE", dir.join(".flowstone"))
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("the main job failed: {status}");
            }
            let path = dir.join(".flowstone");
            _temp = TempDir(dir);
            path
        }
    };

    serve_process(&flights, &store)?;
    if !serve_only {
        in_process()?;
    }
    Ok(())
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("flowstone-serve-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Start time, idle RSS and asset-list latency of `flights serve`.
fn serve_process(flights: &Path, store: &Path) -> anyhow::Result<()> {
    println!("\n== flights serve ({})", store.display());
    let mut starts = Vec::new();
    let mut child = None;
    for round in 0..5 {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let started = Instant::now();
        let mut spawned = Command::new(flights)
            .args(["serve", "--bind", &addr.to_string()])
            .env("FLOWSTONE_STORE", store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        loop {
            if let Ok(mut stream) = TcpStream::connect(addr)
                && get(&mut stream, "/api/v1/health").is_ok_and(|(s, _)| s == 200)
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = spawned.kill();
                bail!("serve did not answer within 10 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        starts.push(started.elapsed());
        if round == 4 {
            child = Some((spawned, addr));
        } else {
            let _ = spawned.kill();
            let _ = spawned.wait();
        }
    }
    starts.sort();
    println!(
        "time until the port answers (5 starts): median {:.1} ms, max {:.1} ms",
        ms(starts[2]),
        ms(starts[4])
    );

    let (mut child, addr) = child.context("a server is running")?;
    let mut stream = TcpStream::connect(addr)?;
    let first = Instant::now();
    let (status, _) = get(&mut stream, "/api/v1/assets")?;
    println!(
        "first asset list (computes the status of 10,277 partitions): {:.1} ms, status {status}",
        ms(first.elapsed())
    );
    // Idle: past the two trims that follow the last request (1 s, 6 s).
    std::thread::sleep(Duration::from_secs(7));
    println!("idle after that: {}", Memory::of(child.id())?);
    let latencies = repeat(1000, || get(&mut stream, "/api/v1/assets").map(|_| ()))?;
    report("GET /api/v1/assets (keep-alive, 1000 requests)", latencies);
    println!("after those requests: {}", Memory::of(child.id())?);
    let graph = repeat(100, || get(&mut stream, "/ui/graph").map(|_| ()))?;
    report("GET /ui/graph (the graph's SVG, 100 requests)", graph);

    // The status while a backfill records materializations: every request
    // finds new events and brings the status up to date first.
    let (status, body) = post(
        &mut stream,
        "/api/v1/runs",
        r#"{"assets":["raw_weather"],"mode":"backfill","all":true,"force":true,"max_parallel":4}"#,
    )?;
    if status != 201 {
        bail!("launch failed: {status} {body}");
    }
    let run = serde_json::from_str::<serde_json::Value>(&body)?["run_id"]
        .as_str()
        .context("a run id")?
        .to_owned();
    let backfill = Instant::now();
    let mut during = Vec::new();
    loop {
        let started = Instant::now();
        get(&mut stream, "/api/v1/assets")?;
        during.push(started.elapsed());
        let (_, body) = get(&mut stream, &format!("/api/v1/runs/{run}"))?;
        let value: serde_json::Value = serde_json::from_str(&body)?;
        if value["run"]["state"] != "running" {
            break;
        }
        if backfill.elapsed() > Duration::from_secs(300) {
            bail!("the backfill did not end within 300 s");
        }
    }
    println!(
        "backfill of the 8,760 raw_weather hours (forced) through serve: {:.1} s",
        backfill.elapsed().as_secs_f64()
    );
    report(
        "GET /api/v1/assets while it runs (status brought up to date)",
        during,
    );
    // Idle: past the two trims that follow the last request (1 s, 6 s).
    std::thread::sleep(Duration::from_secs(7));
    println!("idle after the backfill: {}", Memory::of(child.id())?);
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// The million-partition requests and the event-stream latency, on a
/// server in this process with synthetic assets.
fn in_process() -> anyhow::Result<()> {
    println!("\n== in process: a million hourly partitions, and the event stream");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (server, engine) = runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await?);
        let engine =
            Engine::new(definitions()?, store).with_default_io(Arc::new(MemoryIoManager::new()));
        let options = ServeOptions {
            bind: "127.0.0.1:0".parse()?,
            worker: false,
            ..ServeOptions::default()
        };
        let server = Server::start(engine.clone(), options).await?;
        anyhow::Ok((server, engine))
    })?;
    let addr = server.addr();
    let mut stream = TcpStream::connect(addr)?;

    // A thousand materialized partitions among a million.
    let (status, body) = post(
        &mut stream,
        "/api/v1/runs",
        r#"{"assets":["big"],"from":"1950-01-01T00:00","to":"1950-02-11T15:00","max_parallel":4}"#,
    )?;
    if status != 201 {
        bail!("launch failed: {status} {body}");
    }
    let run = serde_json::from_str::<serde_json::Value>(&body)?["run_id"]
        .as_str()
        .context("a run id")?
        .to_owned();
    wait_run(&mut stream, &run)?;
    let (_, asset) = get(&mut stream, "/api/v1/assets/big")?;
    let asset: serde_json::Value = serde_json::from_str(&asset)?;
    println!(
        "asset big: {} partitions, {} materialized",
        asset["partitions"]["count"], asset["counts"]["materialized"]
    );
    let pages = repeat(1000, || {
        get(
            &mut stream,
            "/api/v1/assets/big/partitions?offset=500000&limit=100",
        )
        .map(|_| ())
    })?;
    report("GET .../big/partitions?offset=500000&limit=100", pages);
    let ranges = repeat(1000, || {
        get(&mut stream, "/api/v1/assets/big/partitions/ranges").map(|_| ())
    })?;
    report("GET .../big/partitions/ranges", ranges);
    let missing = repeat(200, || {
        get(
            &mut stream,
            "/api/v1/assets/big/partitions?state=missing&offset=900000",
        )
        .map(|_| ())
    })?;
    report(
        "GET .../big/partitions?state=missing&offset=900000",
        missing,
    );

    // Step completed -> event at a stream client. The event's `at` is when
    // the step finished; the client notes when the event arrives.
    let (tx, rx) = std::sync::mpsc::channel::<(String, f64)>();
    let mut events = TcpStream::connect(addr)?;
    write!(
        events,
        "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    // Closed before the shutdown, which waits for open connections.
    let events_end = events.try_clone()?;
    std::thread::spawn(move || {
        let reader = BufReader::new(events);
        let mut kind = String::new();
        for line in reader.lines().map_while(Result::ok) {
            if let Some(k) = line.strip_prefix("event: ") {
                kind = k.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ")
                && kind == "materialized"
                && let Ok(event) = serde_json::from_str::<serde_json::Value>(data)
                && let Some(at) = event["at"]
                    .as_str()
                    .and_then(|a| a.parse::<jiff::Timestamp>().ok())
            {
                let lag = jiff::Timestamp::now().duration_since(at).as_secs_f64() * 1000.0;
                let partition = event["data"]["partition"].as_str().unwrap_or("").to_owned();
                if tx.send((partition, lag)).is_err() {
                    return;
                }
            }
        }
    });
    let mut via_api = Vec::new();
    for hour in 0..50 {
        let key = format!("1960-01-01T{hour:02}:00", hour = hour % 24);
        let key = if hour >= 24 {
            key.replace("01-01", "01-02")
        } else {
            key
        };
        let body = format!(r#"{{"assets":["big"],"partitions":["{key}"]}}"#);
        let (status, text) = post(&mut stream, "/api/v1/runs", &body)?;
        if status != 201 {
            bail!("launch failed: {status} {text}");
        }
        let (_, lag) = rx.recv_timeout(Duration::from_secs(10))?;
        via_api.push(Duration::from_secs_f64(lag / 1000.0));
    }
    report(
        "step completed -> SSE client, run launched by this server (woken feed)",
        via_api,
    );

    let mut polled = Vec::new();
    for hour in 0..20 {
        let key = format!("1961-01-01T{hour:02}:00");
        let engine = engine.clone();
        runtime.block_on(async move { engine.materialize("big", Some(&key)).await.map(|_| ()) })?;
        let (_, lag) = rx.recv_timeout(Duration::from_secs(10))?;
        polled.push(Duration::from_secs_f64(lag / 1000.0));
    }
    report(
        "step completed -> SSE client, run of another loop (100 ms poll)",
        polled,
    );

    let _ = events_end.shutdown(std::net::Shutdown::Both);
    runtime.block_on(server.shutdown())?;
    Ok(())
}

/// A million hourly partitions (1900 to 2014) and nothing else.
fn definitions() -> anyhow::Result<Definitions> {
    let hourly = TimeWindowPartitions::hourly("1900-01-01")
        .time_zone("UTC")
        .end("2015-01-01")
        .build();
    Ok(Definitions::builder()
        .add_asset(
            AssetBuilder::new("big")
                .partitions(hourly)
                .compute(|_ctx, _inputs| async move { Ok(1u8) }),
        )
        .build()?)
}

fn wait_run(stream: &mut TcpStream, run: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let (_, body) = get(stream, &format!("/api/v1/runs/{run}"))?;
        let value: serde_json::Value = serde_json::from_str(&body)?;
        if value["run"]["state"] != "running" {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("run {run} did not end within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn repeat(n: usize, mut call: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        call()?;
        out.push(started.elapsed());
    }
    Ok(out)
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(times[times.len() - 1]),
        times.len()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A process's memory from `/proc/PID/status`, in MiB.
struct Memory {
    rss: f64,
    /// Heap, stacks and other private memory.
    anon: f64,
    /// Mapped files, nearly all of it the binary's code.
    file: f64,
    /// The peak resident set.
    peak: f64,
    threads: u32,
}

impl Memory {
    fn of(pid: u32) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<f64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("{name} in /proc/PID/status"))
        };
        Ok(Memory {
            rss: field("VmRSS")? / 1024.0,
            anon: field("RssAnon")? / 1024.0,
            file: field("RssFile")? / 1024.0,
            peak: field("VmHWM")? / 1024.0,
            threads: field("Threads")? as u32,
        })
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB (anon {:.1}, file {:.1}; peak {:.1} MiB), {} threads",
            self.rss, self.anon, self.file, self.peak, self.threads
        )
    }
}

/// One request on a keep-alive connection; the body by Content-Length.
fn request(stream: &mut TcpStream, head: &str, body: &str) -> anyhow::Result<(u16, String)> {
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("a status line")?;
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut buf = vec![0; length];
    reader.read_exact(&mut buf)?;
    Ok((status, String::from_utf8_lossy(&buf).into_owned()))
}

/// A GET that must succeed: a figure of error answers would mean nothing.
fn get(stream: &mut TcpStream, path: &str) -> anyhow::Result<(u16, String)> {
    // A server without tokens answers only loopback names.
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let (status, body) = request(stream, &head, "")?;
    if status >= 400 {
        bail!("GET {path} answered {status}: {body}");
    }
    Ok((status, body))
}

fn post(stream: &mut TcpStream, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    request(stream, &head, body)
}
