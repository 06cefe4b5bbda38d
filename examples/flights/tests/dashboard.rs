//! `flights serve` as a user meets it: refusals at start, the API on a real
//! port, and the dashboard in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver).
//!
//! The browser tests skip with a message when Chromium or chromedriver
//! cannot start, unless `CI` is set: then they fail.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

fn flights(store: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flights"));
    command
        .env("FLOWSTONE_STORE", store)
        .env_remove("FLOWSTONE_STORAGE")
        .env_remove("FLOWSTONE_API_TOKENS");
    command
}

#[test]
fn serve_refuses_an_open_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = flights(dir.path())
        .args(["serve", "--bind", "0.0.0.0:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refusing to serve on 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(stderr.contains("FLOWSTONE_API_TOKENS"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn serve_refuses_a_bad_token_list() {
    let dir = tempfile::tempdir().unwrap();
    let out = flights(dir.path())
        .args(["serve"])
        .env("FLOWSTONE_API_TOKENS", "admin:0123456789abcdef")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`read` or `launch`"), "{stderr}");
}

#[test]
fn serve_refuses_a_bad_address() {
    let dir = tempfile::tempdir().unwrap();
    for (bind, says) in [
        ("localhost", "has no port"),
        ("not_a_host!:3000", "neither an IP address nor a host name"),
    ] {
        let out = flights(dir.path())
            .args(["serve", "--bind", bind])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--bind") && stderr.contains(says),
            "{stderr}"
        );
        assert!(stderr.contains("localhost:3000"), "{stderr}");
    }
}

/// Regression: `--bind localhost:PORT` was refused as "invalid socket
/// address syntax". It is loopback, so it needs no token.
#[test]
fn serve_binds_localhost_as_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start_on(dir.path(), "localhost:0");
    assert!(
        served.base.starts_with("http://127.0.0.1:"),
        "{}",
        served.base
    );
    let (status, body) = get(&served.base, "/api/v1/health");
    assert_eq!(status, 200, "{body}");
    let status = served.stop();
    assert_eq!(status.code(), Some(0));
}

/// A `flights serve` child on a free loopback port, killed on drop.
struct Served {
    child: Child,
    base: String,
}

impl Served {
    fn start(store: &Path) -> Served {
        Served::start_on(store, "127.0.0.1:0")
    }

    /// Serves on `bind`, which must be a loopback address.
    fn start_on(store: &Path, bind: &str) -> Served {
        let mut child = flights(store)
            .args(["serve", "--bind", bind])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = lines
            .next()
            .expect("serve prints where it listens")
            .unwrap();
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Served { child, base }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "serve did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET on loopback; returns the status and the body.
fn get(base: &str, path: &str) -> (u16, String) {
    use std::io::Write;
    let host = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn serve_answers_on_loopback_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path());
    let (status, body) = get(&served.base, "/api/v1/health");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&served.base, "/api/v1/assets/nope");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"unknown_asset\""), "{body}");
    let status = served.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM stops serve cleanly");
}

// -- the browser -----------------------------------------------------------------

/// chromedriver on a free port in a process group of its own; dropping it
/// ends the group, so the Chromium it started ends too, even when a test
/// fails before closing its session.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver and a headless Chromium session; `None` (after
/// saying why) when they cannot start and `CI` is not set.
async fn browser() -> Option<(Driver, Client)> {
    match try_browser().await {
        Ok(found) => Some(found),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("the browser tests need Chromium in CI: {why}")
        }
        Err(why) => {
            eprintln!("skipping the browser test: {why} (install chromium and chromium-driver)");
            None
        }
    }
}

async fn try_browser() -> Result<(Driver, Client), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    use std::os::unix::process::CommandExt;

    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start chromedriver: {e}"))?;
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900"]
        }),
    );
    let started = Instant::now();
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&driver.url)
            .await
        {
            Ok(client) => return Ok((driver, client)),
            Err(err) if started.elapsed() > Duration::from_secs(20) => {
                return Err(format!("chromium did not start: {err}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after 30 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn attr(client: &Client, css: &str, name: &str) -> Option<String> {
    let element = client.find(Locator::Css(css)).await.ok()?;
    element.attr(name).await.ok().flatten()
}

/// Marks the window, so a later check can tell that it was not reloaded.
async fn mark(client: &Client) {
    client
        .execute("window.__flowstoneMark = 42; return null;", vec![])
        .await
        .unwrap();
}

async fn still_marked(client: &Client) -> bool {
    client
        .execute("return window.__flowstoneMark === 42;", vec![])
        .await
        .unwrap()
        .as_bool()
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_launches_from_the_page_and_updates_live() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path());
    let Some((_driver, client)) = browser().await else {
        return;
    };
    let base = served.base.clone();

    // The graph of the flights example: every asset, nothing materialized.
    client.goto(&format!("{base}/")).await.unwrap();
    let nodes = client.find_all(Locator::Css("g.node")).await.unwrap();
    assert_eq!(nodes.len(), 10, "the ten flights assets");
    let node = "g.node[data-asset='raw_flights']";
    assert_eq!(
        attr(&client, node, "data-state").await.as_deref(),
        Some("missing")
    );
    let detail = client
        .find(Locator::Css(&format!("{node} .detail")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(detail.contains("0/365"), "{detail}");
    pan_zoom_and_highlight(&client).await;
    mark(&client).await;
    let graph_window = client.window().await.unwrap();

    // In a second tab: the asset page, one partition, Materialize.
    let tab = client.new_window(true).await.unwrap();
    client.switch_to_window(tab.handle).await.unwrap();
    client
        .goto(&format!("{base}/assets/raw_flights"))
        .await
        .unwrap();
    let heatmap_missing = attr(&client, "#counts", "data-missing").await;
    assert_eq!(heatmap_missing.as_deref(), Some("365"));
    let cells = client
        .find_all(Locator::Css(".heatmap .cell.s-missing"))
        .await
        .unwrap();
    assert_eq!(cells.len(), 365, "one heatmap cell per day");
    client
        .find(Locator::Css("input[name=partition]"))
        .await
        .unwrap()
        .send_keys("2013-07-04")
        .await
        .unwrap();
    client
        .find(Locator::Id("materialize"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let run_url = eventually("the run page", || async {
        let url = client.current_url().await.ok()?;
        url.path().starts_with("/runs/").then(|| url.to_string())
    })
    .await;
    eventually("the run to succeed", || async {
        let state = attr(&client, "#run-summary", "data-state").await?;
        (state == "succeeded").then_some(())
    })
    .await;

    // Back on the graph tab: the node changed without a reload.
    client.switch_to_window(graph_window).await.unwrap();
    eventually("the graph node to count the new partition", || async {
        let text = client
            .find(Locator::Css(&format!("{node} .detail")))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("1/365").then_some(())
    })
    .await;
    assert!(
        still_marked(&client).await,
        "the graph page was not reloaded"
    );

    // The asset page's heatmap counts the partition, with the right cell.
    client
        .goto(&format!("{base}/assets/raw_flights"))
        .await
        .unwrap();
    assert_eq!(
        attr(&client, "#counts", "data-materialized")
            .await
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        attr(&client, ".cell[data-partition='2013-07-04']", "data-state")
            .await
            .as_deref(),
        Some("materialized")
    );

    // The partition's heatmap cell, and its bar in the chart of rows per
    // day, open the materialization with its metadata.
    let opened = || async {
        let url = client.current_url().await.ok()?;
        if !url.query()?.contains("partition=2013-07-04") {
            return None;
        }
        let text = client
            .find(Locator::Id("materialization"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("rows").then_some(())
    };
    client
        .find(Locator::Css(".cell[data-partition='2013-07-04']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the materialization of the cell", opened).await;
    client
        .goto(&format!("{base}/assets/raw_flights"))
        .await
        .unwrap();
    assert_eq!(
        attr(&client, "svg.chart", "data-metric").await.as_deref(),
        Some("rows")
    );
    let bars = client
        .find_all(Locator::Css("svg.chart .bar"))
        .await
        .unwrap();
    assert_eq!(bars.len(), 1, "one materialized day");
    client
        .find(Locator::Css("svg.chart a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the materialization of the bar", opened).await;

    // A run page open while its run goes on changes without a reload: a
    // month of hourly weather, launched from the backfill form.
    client
        .goto(&format!("{base}/assets/raw_weather"))
        .await
        .unwrap();
    let from = client.find(Locator::Css("input[name=from]")).await.unwrap();
    from.clear().await.unwrap();
    from.send_keys("2013-01-01T00:00").await.unwrap();
    let to = client.find(Locator::Css("input[name=to]")).await.unwrap();
    to.clear().await.unwrap();
    to.send_keys("2013-01-31T23:00").await.unwrap();
    client
        .find(Locator::Css("form[action$='/backfill'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the backfill's run page", || async {
        let url = client.current_url().await.ok()?;
        (url.path().starts_with("/runs/") && url.to_string() != run_url).then_some(())
    })
    .await;
    mark(&client).await;
    eventually("the backfill to succeed on the open page", || async {
        let state = attr(&client, "#run-summary", "data-state").await?;
        (state == "succeeded").then_some(())
    })
    .await;
    let done = client
        .find_all(Locator::Css(".steps .step[data-state='completed']"))
        .await
        .unwrap();
    assert_eq!(done.len(), 744, "31 days of 24 hours");
    assert!(still_marked(&client).await, "the run page was not reloaded");

    client.close().await.unwrap();
    served.stop();
}

async fn number(client: &Client, script: &str) -> f64 {
    client
        .execute(script, vec![])
        .await
        .unwrap()
        .as_f64()
        .unwrap_or(f64::NAN)
}

async fn view_box(client: &Client) -> Vec<f64> {
    let text = attr(client, "#graph-svg", "viewBox")
        .await
        .unwrap_or_default();
    text.split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// The graph page's own script: buttons, the wheel and a drag move the
/// view; a click highlights a node's upstream and downstream, dims the
/// rest and shows its detail; Escape clears it.
async fn pan_zoom_and_highlight(client: &Client) {
    let zoom = || {
        number(
            client,
            "return +document.getElementById('graph').dataset.zoom;",
        )
    };
    let before = zoom().await;
    assert!(before > 0.0, "the script set the view: {before}");
    client
        .find(Locator::Id("zoom-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let closer = zoom().await;
    assert!(closer > before * 1.2, "zoom in: {before} -> {closer}");

    // The wheel zooms out around the pointer; a drag moves the view.
    let wheel =
        "const box = document.getElementById('graph'); const r = box.getBoundingClientRect();
        box.dispatchEvent(new WheelEvent('wheel', {deltaY: 400, clientX: r.left + 100,
            clientY: r.top + 100, bubbles: true, cancelable: true}));
        return +box.dataset.zoom;";
    let farther = number(client, wheel).await;
    assert!(
        farther < closer,
        "the wheel zooms out: {closer} -> {farther}"
    );
    let start = view_box(client).await;
    client
        .execute(
            "const box = document.getElementById('graph'); const r = box.getBoundingClientRect();
             const at = (type, dx) => new PointerEvent(type, {clientX: r.left + 200 + dx,
                 clientY: r.top + 200, button: 0, bubbles: true});
             box.dispatchEvent(at('pointerdown', 0));
             window.dispatchEvent(at('pointermove', 60));
             window.dispatchEvent(at('pointermove', 120));
             window.dispatchEvent(at('pointerup', 120));
             return null;",
            vec![],
        )
        .await
        .unwrap();
    let moved = view_box(client).await;
    assert!(
        moved[0] < start[0],
        "dragging right shows what is left: {start:?} -> {moved:?}"
    );
    client
        .find(Locator::Id("zoom-fit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Selecting daily_report lights its upstream and downstream only.
    client
        .find(Locator::Css("g.node[data-asset='daily_report']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        client.current_url().await.unwrap().path(),
        "/",
        "a click selects instead of leaving the page"
    );
    let lit: Vec<String> = {
        let mut lit = Vec::new();
        for node in client
            .find_all(Locator::Css("svg.graph.focus g.node.hl"))
            .await
            .unwrap()
        {
            lit.push(node.attr("data-asset").await.unwrap().unwrap_or_default());
        }
        lit.sort();
        lit
    };
    assert_eq!(
        lit,
        [
            "airlines",
            "carrier_ranking",
            "cleaned_flights",
            "daily_report",
            "daily_weather",
            "raw_flights",
            "raw_weather",
            "weekly_report"
        ],
        "airports and planes are dimmed"
    );
    eventually("the node's detail", || async {
        let text = client
            .find(Locator::Css("#node-detail h2[data-node='a:daily_report']"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (text == "daily_report").then_some(())
    })
    .await;
    client
        .find(Locator::Id("graph"))
        .await
        .unwrap()
        .send_keys("\u{e00c}")
        .await
        .unwrap();
    let focused = client
        .find_all(Locator::Css("svg.graph.focus"))
        .await
        .unwrap();
    assert!(focused.is_empty(), "Escape clears the selection");
}
