//! The JSON API end to end, in process: every route, good input and bad, with
//! the error JSON asserted. Runs really run (in-memory SQLite, in-memory
//! values) through the same worker loop as the CLI.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use flowstone_core::token::generate;
use flowstone_core::{AssetBuilder, Definitions, Engine, MemoryIoManager, RunId, Store};
use flowstone_partitions::TimeWindowPartitions;
use flowstone_server::{AppState, EventFeed, Right, Tokens};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;

/// `numbers` (daily, January 2024) -> `total` (daily); `config` (not
/// partitioned); `big` (hourly since 1900: about a million partitions).
fn definitions() -> Definitions {
    let january = || {
        TimeWindowPartitions::daily("2024-01-01")
            .time_zone("UTC")
            .end("2024-02-01")
            .build()
    };
    Definitions::builder()
        .add_asset(
            AssetBuilder::new("numbers")
                .description("Numbers of the day.")
                .partitions(january())
                .compute(|ctx, _inputs| async move {
                    let day = ctx.require_partition_key()?.as_str().to_owned();
                    ctx.add_metadata("rows", 3);
                    ctx.add_metadata("day_of_month", day[8..].parse::<u32>().unwrap_or(0));
                    Ok(vec![day.len() as u32, 2, 3])
                }),
        )
        .add_asset(
            AssetBuilder::new("total")
                .partitions(january())
                .dep::<Vec<u32>>("numbers")
                .compute(|_ctx, mut inputs| async move {
                    let numbers: Vec<u32> = inputs.take::<Vec<u32>, _>("numbers")?;
                    Ok(numbers.iter().sum::<u32>())
                }),
        )
        .add_asset(AssetBuilder::new("config").compute(|_ctx, _inputs| async move { Ok(7u32) }))
        .add_asset(
            AssetBuilder::new("big")
                .partitions(
                    TimeWindowPartitions::hourly("1900-01-01")
                        .time_zone("UTC")
                        .end("2020-01-01")
                        .build(),
                )
                .compute(|_ctx, _inputs| async move { Ok(1u8) }),
        )
        .build()
        .expect("the test definitions are valid")
}

struct App {
    router: Router,
    state: AppState,
    _stop: watch::Sender<bool>,
}

async fn app_with(tokens: Tokens) -> App {
    app_of(definitions(), tokens).await
}

async fn app_of(definitions: Definitions, tokens: Tokens) -> App {
    let store = flowstone_sqlite::SqliteStore::in_memory()
        .await
        .expect("an in-memory store");
    let store: Arc<dyn Store> = Arc::new(store);
    let engine = Engine::new(definitions, store.clone())
        .with_default_io(Arc::new(MemoryIoManager::new()))
        .with_user("tester");
    let (stop, stop_rx) = watch::channel(false);
    let (feed, _task) = EventFeed::start(store, Duration::from_millis(20), stop_rx).await;
    let state = AppState::new(engine, tokens, feed);
    App {
        router: flowstone_server::router(state.clone()),
        state,
        _stop: stop,
    }
}

async fn app() -> App {
    app_with(Tokens::none()).await
}

impl App {
    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router answers");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    /// The whole response to a browser's GET of `uri` (status, headers).
    async fn html_response(&self, uri: &str) -> axum::response::Response {
        self.router
            .clone()
            .oneshot(
                Request::get(uri)
                    .header(header::ACCEPT, "text/html")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .expect("the router answers")
    }

    /// Waits (up to 10 s) for a run to leave `running`; returns the run.
    async fn wait_run(&self, run: &str) -> Value {
        for _ in 0..500 {
            let (status, body) = self.get(&format!("/api/v1/runs/{run}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if body["run"]["state"] != "running" {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("run {run} did not end within 10 s");
    }

    async fn materialize(&self, asset: &str, partition: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/runs",
                json!({ "assets": [asset], "partitions": [partition] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let run = body["run_id"].as_str().expect("a run id").to_owned();
        let ended = self.wait_run(&run).await;
        assert_eq!(ended["run"]["state"], "succeeded", "{ended}");
        run
    }
}

/// Asserts the error shape, the status and the code; returns the message.
fn error(got: (StatusCode, Value), status: StatusCode, code: &str) -> String {
    let (got_status, body) = got;
    assert_eq!(got_status, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .expect("an error message")
        .to_owned();
    assert!(!message.is_empty());
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_in_the_openapi_document() {
    let app = app().await;
    let (status, doc) = app.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let routes = flowstone_server::api_routes();
    for (method, path) in &routes {
        let method = method.as_str().to_ascii_lowercase();
        assert!(
            paths.get(*path).and_then(|p| p.get(&method)).is_some(),
            "{method} {path} is served but not in the OpenAPI document"
        );
    }
    for (path, methods) in paths {
        for method in methods.as_object().expect("methods").keys() {
            let served = routes
                .iter()
                .any(|(m, p)| p == path && m.as_str().eq_ignore_ascii_case(method));
            assert!(served, "{method} {path} is documented but not served");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_unknown_routes() {
    let app = app().await;
    let (status, body) = app.get("/api/v1/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["assets"], 4);

    let message = error(
        app.get("/api/v1/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert!(message.contains("/api/v1/nope"), "{message}");
    let message = error(
        app.send(
            Request::delete("/api/v1/assets")
                .body(Body::empty())
                .unwrap(),
        )
        .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert!(message.contains("DELETE"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_list_and_detail() {
    let app = app().await;
    let (status, body) = app.get("/api/v1/assets").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let assets = body["assets"].as_array().expect("assets");
    assert_eq!(assets.len(), 4);
    let numbers = assets.iter().find(|a| a["key"] == "numbers").unwrap();
    assert_eq!(numbers["partitions"]["kind"], "daily");
    assert_eq!(numbers["partitions"]["count"], 31);
    assert_eq!(numbers["counts"]["missing"], 31);
    assert_eq!(numbers["downstream"], json!(["total"]));
    assert_eq!(numbers["latest"], Value::Null);
    assert_eq!(numbers["description"], "Numbers of the day.");

    let (status, total) = app.get("/api/v1/assets/total").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(total["upstream"], json!(["numbers"]));

    let message = error(
        app.get("/api/v1/assets/numbrs").await,
        StatusCode::NOT_FOUND,
        "unknown_asset",
    );
    assert!(
        message.contains("numbrs") && message.contains("numbers"),
        "{message}"
    );
    let message = error(
        app.get("/api/v1/assets/bad%20key").await,
        StatusCode::NOT_FOUND,
        "unknown_asset",
    );
    assert!(message.contains("invalid asset key"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_pages_ranges_and_bad_input() {
    let app = app().await;
    let (status, page) = app.get("/api/v1/assets/numbers/partitions?limit=5").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 31);
    let rows = page["partitions"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0]["partition"], "2024-01-01");
    assert_eq!(rows[0]["state"], "missing");

    let (status, page) = app
        .get("/api/v1/assets/numbers/partitions?from=2024-01-30&to=2024-01-31")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let keys: Vec<&str> = page["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["partition"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["2024-01-30", "2024-01-31"]);

    // A million partitions: the last page and the ranges, without listing them.
    let (status, big) = app.get("/api/v1/assets/big").await;
    assert_eq!(status, StatusCode::OK);
    let count = big["partitions"]["count"].as_u64().unwrap();
    assert!(count > 1_000_000, "{count}");
    let (status, page) = app
        .get(&format!(
            "/api/v1/assets/big/partitions?offset={}&limit=3",
            count - 3
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["partitions"][2]["partition"], "2019-12-31T23:00+00:00");
    let (status, ranges) = app.get("/api/v1/assets/big/partitions/ranges").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ranges["ranges"].as_array().unwrap().len(), 1);
    assert_eq!(ranges["ranges"][0]["count"], count);
    assert_eq!(ranges["ranges"][0]["state"], "missing");
    let (status, page) = app
        .get("/api/v1/assets/big/partitions?state=missing&offset=999999&limit=2")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["partitions"][0]["index"], 999_999);

    // Bad input: each says what was wrong and what is accepted.
    let message = error(
        app.get("/api/v1/assets/numbers/partitions?from=2024-01-31&to=2024-01-02")
            .await,
        StatusCode::BAD_REQUEST,
        "bad_range",
    );
    assert!(message.contains("reversed"), "{message}");
    error(
        app.get("/api/v1/assets/numbers/partitions?from=2024-01-02")
            .await,
        StatusCode::BAD_REQUEST,
        "bad_range",
    );
    let message = error(
        app.get("/api/v1/assets/numbers/partitions?from=2024-13-01&to=2024-01-02")
            .await,
        StatusCode::BAD_REQUEST,
        "bad_partition",
    );
    assert!(message.contains("2024-13-01"), "{message}");
    let message = error(
        app.get("/api/v1/assets/numbers/partitions?limit=0").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(message.contains("1 to 10000"), "{message}");
    let message = error(
        app.get("/api/v1/assets/numbers/partitions?limit=many")
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(message.contains("limit"), "{message}");
    let message = error(
        app.get("/api/v1/assets/numbers/partitions?state=green")
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(
        message.contains("materialized, stale, failed, missing"),
        "{message}"
    );
    error(
        app.get("/api/v1/assets/numbers/partitions?colour=red")
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        app.get("/api/v1/assets/config/partitions").await,
        StatusCode::BAD_REQUEST,
        "bad_partition",
    );
    error(
        app.get("/api/v1/assets/config/partitions/ranges").await,
        StatusCode::BAD_REQUEST,
        "bad_partition",
    );
    error(
        app.get("/api/v1/assets/nope/partitions/ranges").await,
        StatusCode::NOT_FOUND,
        "unknown_asset",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_materialize_and_read_the_record() {
    let app = app().await;
    let run = app.materialize("numbers", "2024-01-05").await;
    let run2 = app.materialize("total", "2024-01-05").await;
    assert_ne!(run, run2);

    // Status, counts and ranges see it.
    let (_, asset) = app.get("/api/v1/assets/numbers").await;
    assert_eq!(asset["counts"]["materialized"], 1, "{asset}");
    assert_eq!(asset["latest"]["partition"], "2024-01-05");
    let (_, ranges) = app.get("/api/v1/assets/numbers/partitions/ranges").await;
    let states: Vec<(&str, u64)> = ranges["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["state"].as_str().unwrap(), r["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("missing", 4), ("materialized", 1), ("missing", 26)]
    );
    let (_, page) = app
        .get("/api/v1/assets/numbers/partitions?state=materialized")
        .await;
    assert_eq!(page["partitions"][0]["partition"], "2024-01-05");

    // The materialization, its metadata and lineage both ways.
    let (status, latest) = app
        .get("/api/v1/assets/numbers/materializations/latest?partition=2024-01-05")
        .await;
    assert_eq!(status, StatusCode::OK, "{latest}");
    assert_eq!(latest["materialization"]["metadata"]["rows"], 3);
    assert_eq!(latest["consumers"][0]["target"]["asset"], "total");
    let id = latest["materialization"]["id"].as_i64().unwrap();
    let (status, by_id) = app.get(&format!("/api/v1/materializations/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_id["materialization"]["run_id"], run.as_str());
    let (status, up) = app
        .get("/api/v1/assets/total/lineage?partition=2024-01-05&direction=upstream")
        .await;
    assert_eq!(status, StatusCode::OK, "{up}");
    assert_eq!(up["nodes"].as_array().unwrap().len(), 1);
    let (status, down) = app
        .get("/api/v1/assets/numbers/lineage?partition=2024-01-05&direction=downstream&depth=1")
        .await;
    assert_eq!(status, StatusCode::OK, "{down}");
    assert_eq!(down["direction"], "downstream");
    let (status, impact) = app
        .get("/api/v1/assets/numbers/impact?partition=2024-01-05")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(impact["impact"][0]["asset"], "total");
    assert_eq!(impact["impact"][0]["partitions"], json!(["2024-01-05"]));

    // Bad input on these routes.
    let message = error(
        app.get("/api/v1/assets/numbers/materializations/latest?partition=2024-01-06")
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert!(message.contains("never been materialized"), "{message}");
    let message = error(
        app.get("/api/v1/assets/numbers/materializations/latest")
            .await,
        StatusCode::BAD_REQUEST,
        "bad_partition",
    );
    assert!(message.contains("?partition=2024-01-01"), "{message}");
    error(
        app.get("/api/v1/assets/config/impact?partition=x").await,
        StatusCode::BAD_REQUEST,
        "bad_partition",
    );
    error(
        app.get("/api/v1/assets/numbers/impact?partition=yesterday")
            .await,
        StatusCode::BAD_REQUEST,
        "bad_partition",
    );
    error(
        app.get("/api/v1/assets/numbers/lineage?partition=2024-01-05&direction=sideways")
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        app.get("/api/v1/assets/numbers/lineage?partition=2024-01-05&depth=0")
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        app.get("/api/v1/materializations/abc").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        app.get("/api/v1/materializations/999999").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Runs: list, detail, events, cancel and resume of an ended run.
    let (status, runs) = app.get("/api/v1/runs?limit=10").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);
    assert_eq!(runs["runs"][0]["id"], run2.as_str());
    let (status, detail) = app.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["steps"][0]["state"], "completed");
    let (status, events) = app.get(&format!("/api/v1/runs/{run}/events?limit=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events["events"][0]["kind"], "run_started");
    let after = events["next_after"].as_i64().unwrap();
    let (_, rest) = app
        .get(&format!("/api/v1/runs/{run}/events?after={after}"))
        .await;
    let kinds: Vec<&str> = rest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"materialized"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run_finished"));
    let (status, cancelled) = app
        .post(&format!("/api/v1/runs/{run}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["cancelled"], false);
    let message = error(
        app.post(&format!("/api/v1/runs/{run}/resume"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert!(message.contains("already ended"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_and_nothing_to_do() {
    let app = app().await;
    let (status, body) = app
        .post(
            "/api/v1/runs",
            json!({ "assets": ["numbers", "total"], "mode": "backfill",
                    "from": "2024-01-01", "to": "2024-01-03", "max_parallel": 2 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["steps"], 6);
    let run = body["run_id"].as_str().unwrap().to_owned();
    let ended = app.wait_run(&run).await;
    assert_eq!(ended["run"]["steps"]["completed"], 6, "{ended}");

    let (status, body) = app
        .post(
            "/api/v1/runs",
            json!({ "assets": ["numbers"], "mode": "backfill",
                    "from": "2024-01-01", "to": "2024-01-03" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["run_id"], Value::Null);
    assert_eq!(body["already_materialized"], 3);
    assert_eq!(body["already_queued"], 0);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("all 3 selected asset partitions are already materialized"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_to_do_names_the_run_that_holds_the_partitions() {
    let app = app().await;
    // A run queued by another process (submitted, nobody working on it).
    let request = flowstone_core::RunRequest::backfill(
        vec!["numbers".parse().unwrap()],
        flowstone_core::PartitionSelection::Keys(vec!["2024-01-05".into(), "2024-01-06".into()]),
    );
    let (_, run) = app.state.engine().submit(&request).await.unwrap();
    let holder = run.expect("a run was queued").id.to_string();

    let (status, body) = app
        .post(
            "/api/v1/runs",
            json!({ "assets": ["numbers"], "mode": "backfill",
                    "from": "2024-01-05", "to": "2024-01-06" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["run_id"], Value::Null);
    assert_eq!(body["already_materialized"], 0);
    assert_eq!(body["already_queued"], 2);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("queued or running in other runs") && message.contains(&holder),
        "{message}"
    );
    assert!(!message.contains("already materialized"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_does_not_look_done() {
    let app = app().await;
    let request = flowstone_core::RunRequest::backfill(
        vec!["numbers".parse().unwrap()],
        flowstone_core::PartitionSelection::Keys(vec!["2024-01-07".into(), "2024-01-08".into()]),
    );
    let (_, run) = app.state.engine().submit(&request).await.unwrap();
    let run = run.expect("a run was queued").id.to_string();
    let (status, body) = app
        .post(&format!("/api/v1/runs/{run}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cancelled"], true, "{body}");

    let (status, list) = page(&app, "/runs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.contains("value=\"0\"") && list.contains("0 / 2 (2 failed, skipped or cancelled)"),
        "{list}"
    );
    let (status, detail) = page(&app, &format!("/runs/{run}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(detail.contains("⊘ 2 cancelled"), "{detail}");
    assert!(
        detail.contains("class=\"big\" max=\"2\" value=\"0\""),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_refuses_bad_input() {
    let app = app().await;
    let raw = |body: &str, content_type: Option<&str>| {
        let mut request = Request::post("/api/v1/runs");
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        request.body(Body::from(body.to_owned())).unwrap()
    };
    let message = error(
        app.send(raw("{\"assets\": [", Some("application/json")))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(message.contains("malformed JSON"), "{message}");
    let message = error(
        app.send(raw("{}", None)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(
        message.contains("Content-Type: application/json"),
        "{message}"
    );
    let message = error(
        app.post("/api/v1/runs", json!({ "asset": ["numbers"] }))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(message.contains("unknown field"), "{message}");
    let message = error(
        app.post(
            "/api/v1/runs",
            json!({ "assets": ["numbrs"], "partitions": ["2024-01-01"] }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "unknown_asset",
    );
    assert!(message.contains("numbers"), "{message}");
    let message = error(
        app.post(
            "/api/v1/runs",
            json!({ "assets": ["numbers"], "partitions": ["2024-02-30"] }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_partition",
    );
    assert!(message.contains("2024-02-30"), "{message}");
    let message = error(
        app.post("/api/v1/runs", json!({ "assets": ["numbers"] }))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_partition",
    );
    assert!(message.contains("\"partitions\""), "{message}");
    let message = error(
        app.post(
            "/api/v1/runs",
            json!({ "assets": ["numbers"], "from": "2024-01-09", "to": "2024-01-02" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_range",
    );
    assert!(message.contains("reversed"), "{message}");
    error(
        app.post(
            "/api/v1/runs",
            json!({ "assets": ["numbers"], "from": "2024-01-09" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_range",
    );
    error(
        app.post(
            "/api/v1/runs",
            json!({ "assets": ["numbers"], "all": true, "partitions": ["2024-01-01"] }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let message = error(
        app.post(
            "/api/v1/runs",
            json!({ "assets": ["config"], "mode": "refresh" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(message.contains("\"backfill\""), "{message}");
    error(
        app.post(
            "/api/v1/runs",
            json!({ "assets": ["config"], "max_parallel": 0 }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        app.post(
            "/api/v1/runs",
            json!({ "assets": ["config"], "force": true }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let message = error(
        app.post(
            "/api/v1/runs",
            json!({ "assets": ["total"], "partitions": ["2024-01-07"] }),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert!(message.contains("with_upstream"), "{message}");
    let (status, _) = app.get("/api/v1/runs").await;
    assert_eq!(status, StatusCode::OK);
}

/// Regression: a body over the 1 MiB limit got a plain-text 413 (when its
/// length was declared) or a 400 `bad_request` (when it was not); it is the
/// JSON error every other refusal is, with its own code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_a_json_413() {
    let app = app().await;
    let big = json!({ "assets": ["numbers"], "partitions": ["x".repeat(1 << 20)] }).to_string();
    let declared = Request::post("/api/v1/runs")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    let message = error(
        app.send(declared).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert!(
        message.contains("1 MiB") && message.contains("1048576"),
        "{message}"
    );

    // Without a declared length, the limit is met while the body is read.
    let undeclared = Request::post("/api/v1/runs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .unwrap();
    error(
        app.send(undeclared).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    // A body just under the limit is read (and refused for what it says).
    let under = json!({ "assets": ["nope"], "partitions": ["x".repeat(1000)] }).to_string();
    let request = Request::post("/api/v1/runs")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, under.len())
        .body(Body::from(under))
        .unwrap();
    error(
        app.send(request).await,
        StatusCode::NOT_FOUND,
        "unknown_asset",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_refuse_bad_ids() {
    let app = app().await;
    let unknown = "01890a5d-ac96-774b-bcce-b302099a8057";
    let message = error(
        app.get("/api/v1/runs/not-a-run").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(message.contains("UUID"), "{message}");
    error(
        app.get(&format!("/api/v1/runs/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "unknown_run",
    );
    error(
        app.get(&format!("/api/v1/runs/{unknown}/events")).await,
        StatusCode::NOT_FOUND,
        "unknown_run",
    );
    error(
        app.post(&format!("/api/v1/runs/{unknown}/cancel"), json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "unknown_run",
    );
    error(
        app.post(&format!("/api/v1/runs/{unknown}/resume"), json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "unknown_run",
    );
    error(
        app.post(
            &format!("/api/v1/runs/{unknown}/resume?max_parallel=0"),
            json!({}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        app.get("/api/v1/runs?limit=0").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        app.get(&format!("/api/v1/events?run={unknown}")).await,
        StatusCode::NOT_FOUND,
        "unknown_run",
    );
    error(
        app.get("/api/v1/events?run=xyz").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

/// Reads the event stream until `want` appears in it, or 10 s pass.
async fn read_until(body: &mut Body, want: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(want) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in the stream within 10 s; got {seen}"))
            .expect("the stream goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_pushes_run_step_and_materialization_events() {
    let app = app().await;
    let response = app
        .router
        .clone()
        .oneshot(Request::get("/api/v1/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();

    let run = app.materialize("numbers", "2024-01-09").await;
    let seen = read_until(&mut body, "event: run_finished").await;
    for kind in ["run_started", "materialized"] {
        assert!(
            seen.contains(&format!("event: {kind}")),
            "{kind} missing in {seen}"
        );
    }
    assert!(seen.contains(&run), "{seen}");

    // A client that gives an id replays what came after it, for one run.
    let response = app
        .router
        .clone()
        .oneshot(
            Request::get(format!("/api/v1/events?after=0&run={run}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let replayed = read_until(&mut body, "event: run_finished").await;
    assert!(
        replayed.starts_with(": ") || replayed.contains("event: run_started"),
        "{replayed}"
    );
    assert!(
        replayed.contains("\"partition\":\"2024-01-09\""),
        "{replayed}"
    );
}

/// Reads the event stream until it ends; panics if it goes on for `within`.
async fn read_to_end(body: &mut Body, within: Duration) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("the stream still goes on after {within:?}; got {seen}"));
        match frame {
            None => return seen,
            Some(frame) => {
                if let Ok(data) = frame.expect("a frame").into_data() {
                    seen.push_str(&String::from_utf8_lossy(&data));
                }
            }
        }
    }
}

/// Regression: an open event stream was checked for a token only when it
/// connected, so a revoked or expired token's stream kept delivering. It is
/// now checked again on a period (here 50 ms instead of 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_end_when_their_token_is_revoked_or_expires() {
    let app = app().await;
    let _ = app
        .state
        .clone()
        .recheck_streams_every(Duration::from_millis(50));
    let store = app.state.engine().store().clone();
    let open = |secret: Option<String>| {
        let router = app.router.clone();
        async move {
            let mut request = Request::get("/api/v1/events");
            if let Some(secret) = secret {
                request = request.header(header::AUTHORIZATION, format!("Bearer {secret}"));
            }
            let response = router
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body()
        }
    };

    // On a server with no token, a stream opened without one ends once a
    // token is made (within the second whether one exists is cached).
    let mut anonymous = open(None).await;
    let now = jiff::Timestamp::now();
    let (kept, kept_secret) = generate("kept", Right::Launch, None, now).unwrap();
    let (revoked, revoked_secret) = generate("revoked", Right::Read, None, now).unwrap();
    let (expiring, expiring_secret) = generate(
        "expiring",
        Right::Read,
        Some(now + jiff::SignedDuration::from_secs(3)),
        now,
    )
    .unwrap();
    for token in [kept, revoked, expiring] {
        store.create_token(token).await.unwrap();
    }
    read_to_end(&mut anonymous, Duration::from_secs(5)).await;

    let mut kept = open(Some(kept_secret.expose().to_owned())).await;
    let mut revoked = open(Some(revoked_secret.expose().to_owned())).await;
    let mut expiring = open(Some(expiring_secret.expose().to_owned())).await;
    store
        .revoke_token("revoked", jiff::Timestamp::now())
        .await
        .unwrap();
    read_to_end(&mut revoked, Duration::from_secs(2)).await;
    read_to_end(&mut expiring, Duration::from_secs(5)).await;

    // A valid token's stream goes on delivering, past many re-checks.
    let (status, body) = app
        .send(token_request(
            Method::POST,
            "/api/v1/runs",
            Some(kept_secret.expose()),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    read_until(&mut kept, "event: run_finished").await;
    app.state.drain_runs().await;
}

/// A request with a JSON launch body, and `token` as a bearer header.
fn token_request(method: Method, uri: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "assets": ["config"] }).to_string()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_every_route_and_launch_needs_the_right() {
    let read = "read-secret-0123456789";
    let launch = "launch-secret-0123456789";
    let app = app_with(
        Tokens::none()
            .with(read, Right::Read)
            .with(launch, Right::Launch),
    )
    .await;
    let with = token_request;

    let (status, _) = app.get("/api/v1/health").await;
    assert_eq!(status, StatusCode::OK, "the health check needs no token");
    for uri in [
        "/api/v1/assets",
        "/api/v1/runs",
        "/api/openapi.json",
        "/api/v1/events",
    ] {
        let message = error(
            app.send(with(Method::GET, uri, None)).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert!(message.contains("Bearer"), "{message}");
        error(
            app.send(with(Method::GET, uri, Some("wrong-secret-0123456789")))
                .await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    let (status, _) = app
        .send(with(Method::GET, "/api/v1/assets", Some(read)))
        .await;
    assert_eq!(status, StatusCode::OK);

    // The session cookie carries the same token.
    let (status, _) = app
        .send(
            Request::get("/api/v1/assets")
                .header(header::COOKIE, format!("other=1; flowstone_token={read}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let message = error(
        app.send(with(Method::POST, "/api/v1/runs", Some(read)))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert!(message.contains("launch right"), "{message}");
    error(
        app.send(with(Method::POST, "/api/v1/runs", None)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let (status, body) = app
        .send(with(Method::POST, "/api/v1/runs", Some(launch)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run = body["run_id"].as_str().unwrap();
    error(
        app.send(with(
            Method::POST,
            &format!("/api/v1/runs/{run}/cancel"),
            Some(read),
        ))
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    app.state.drain_runs().await;
}

#[tokio::test]
async fn open_address_without_a_token_is_refused() {
    let store = flowstone_sqlite::SqliteStore::in_memory().await.unwrap();
    let options = flowstone_server::ServeOptions {
        bind: "0.0.0.0:3000".parse().unwrap(),
        ..Default::default()
    };
    let err = options.check(&store).await.unwrap_err().to_string();
    assert!(
        err.contains("0.0.0.0:3000") && err.contains("tokens create"),
        "{err}"
    );
    let with_token = flowstone_server::ServeOptions {
        tokens: Tokens::none().with("launch-secret-0123456789", Right::Launch),
        ..options.clone()
    };
    assert!(with_token.check(&store).await.is_ok());
    assert!(
        flowstone_server::ServeOptions::default()
            .check(&store)
            .await
            .is_ok()
    );

    // A token in the store is enough, as long as it is not revoked.
    let now = jiff::Timestamp::now();
    let (token, _) = generate("ci", Right::Read, None, now).unwrap();
    store.create_token(token).await.unwrap();
    assert!(options.check(&store).await.is_ok());
    store.revoke_token("ci", now).await.unwrap();
    assert!(options.check(&store).await.is_err());
}

/// Tokens made with the CLI live in the store: they close an open server
/// within a second, work at once, carry their name into the runs they
/// launch, and stop working the moment they are revoked or expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_tokens_take_effect_at_once() {
    let app = app().await;
    let store = app.state.engine().store().clone();
    let bearer = token_request;
    let (status, _) = app.get("/api/v1/assets").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "no token anywhere: open on loopback"
    );

    let now = jiff::Timestamp::now();
    let (reader, read) = generate("dashboard", Right::Read, None, now).unwrap();
    let (launcher, launch) = generate("ci", Right::Launch, None, now).unwrap();
    let (old, expired) = generate(
        "old",
        Right::Launch,
        Some(now + jiff::SignedDuration::from_millis(300)),
        now,
    )
    .unwrap();
    for token in [reader, launcher, old] {
        store.create_token(token).await.unwrap();
    }
    // Whether any token exists is asked at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    error(
        app.send(bearer(Method::GET, "/api/v1/assets", None)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    error(
        app.send(bearer(
            Method::GET,
            "/api/v1/assets",
            Some(expired.expose()),
        ))
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let (status, _) = app
        .send(bearer(Method::GET, "/api/v1/assets", Some(read.expose())))
        .await;
    assert_eq!(status, StatusCode::OK);
    let message = error(
        app.send(bearer(Method::POST, "/api/v1/runs", Some(read.expose())))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert!(
        message.contains("dashboard") && message.contains("launch right"),
        "{message}"
    );
    let (status, body) = app
        .send(bearer(Method::POST, "/api/v1/runs", Some(launch.expose())))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run: RunId = body["run_id"].as_str().unwrap().parse().unwrap();
    let record = store.run(run).await.unwrap().unwrap();
    assert_eq!(
        record.user, "token:ci",
        "the run names the token that launched it"
    );
    app.state.drain_runs().await;

    let listed = store.tokens().await.unwrap();
    let used = listed.iter().find(|t| t.name == "dashboard").unwrap();
    assert!(used.last_used_at.is_some(), "a use is noted: {used:?}");

    // Signing in on the dashboard with a store token sets the cookie.
    let response = app
        .router
        .clone()
        .oneshot(
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("token={}", read.expose())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains(read.expose()) && cookie.contains("HttpOnly"),
        "{cookie}"
    );

    // Pages say who is signed in and offer to sign out, which drops the
    // cookie.
    let response = app
        .router
        .clone()
        .oneshot(
            Request::get("/runs")
                .header(header::COOKIE, format!("flowstone_token={}", read.expose()))
                .header(header::ACCEPT, "text/html")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.into_body().collect().await.unwrap().to_bytes();
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("<strong>dashboard</strong> (read)") && page.contains("href=\"/logout\""),
        "{page}"
    );
    let response = app
        .router
        .clone()
        .oneshot(Request::get("/logout").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/login");
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.starts_with("flowstone_token=;") && cookie.contains("Max-Age=0"),
        "{cookie}"
    );

    // Revoked: refused on the next request, with no wait.
    store
        .revoke_token("dashboard", jiff::Timestamp::now())
        .await
        .unwrap();
    error(
        app.send(bearer(Method::GET, "/api/v1/assets", Some(read.expose())))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    let (again, renewed) = generate("ci", Right::Read, None, jiff::Timestamp::now()).unwrap();
    // With every token revoked or expired, the server stays closed: revoking
    // the last token must not open it to anyone.
    store
        .revoke_token("ci", jiff::Timestamp::now())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let message = error(
        app.send(bearer(Method::GET, "/api/v1/assets", Some(launch.expose())))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert!(message.contains("revoked or expired"), "{message}");
    error(
        app.send(bearer(Method::GET, "/api/v1/assets", None)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    // The scheme is case-insensitive.
    store.create_token(again).await.unwrap();
    let (status, _) = app
        .send(
            Request::get("/api/v1/runs")
                .header(
                    header::AUTHORIZATION,
                    format!("bearer {}", renewed.expose()),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// A server without any token is open to this machine only: a web page in
/// the user's browser cannot post to it from another site, nor reach it
/// under another host name (DNS rebinding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_refuses_other_sites_and_hosts() {
    let app = app().await;
    let post = |headers: &[(&str, &str)]| {
        let mut request = Request::post("/api/v1/runs");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "assets": ["config"] }).to_string()))
            .unwrap()
    };
    for headers in [
        &[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:3000"),
        ][..],
        &[("sec-fetch-site", "cross-site")][..],
        &[("origin", "null"), ("host", "localhost:3000")][..],
    ] {
        let message = error(
            app.send(post(headers)).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert!(
            message.contains("another web site"),
            "{headers:?}: {message}"
        );
    }
    for host in ["evil.example", "evil.example:3000", "10.0.0.1:3000"] {
        let message = error(
            app.send(
                Request::get("/api/v1/assets")
                    .header(header::HOST, host)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert!(message.contains("tokens create"), "{message}");
    }
    // This machine's own names and pages work.
    for host in [
        "127.0.0.1:3000",
        "localhost:3000",
        "[::1]:3000",
        "localhost",
    ] {
        let (status, _) = app
            .send(
                Request::get("/api/v1/assets")
                    .header(header::HOST, host)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{host}");
    }
    let (status, body) = app
        .send(post(&[
            ("origin", "http://127.0.0.1:3000"),
            ("host", "127.0.0.1:3000"),
            ("sec-fetch-site", "same-origin"),
        ]))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.state.drain_runs().await;
}

// -- pages -----------------------------------------------------------------------

async fn page(app: &App, uri: &str) -> (StatusCode, String) {
    let (status, body) = app
        .send(
            Request::get(uri)
                .header(header::ACCEPT, "text/html")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    (status, body.as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_and_refuse_bad_input_with_a_page() {
    let app = app().await;
    let (status, graph) = page(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(graph.matches("class=\"node state-").count(), 4, "{graph}");
    assert!(graph.contains("data-asset=\"numbers\" data-state=\"missing\""));
    assert!(graph.contains("sse-connect=\"/api/v1/events\""));
    assert!(graph.contains("/static/htmx.min.js"));

    let (status, asset) = page(&app, "/assets/numbers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(asset.matches("class=\"cell s-missing\"").count(), 31);
    assert!(asset.contains("data-missing=\"31\""));

    let (status, body) = page(&app, "/assets/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body.contains("unknown_asset") && body.contains("unknown asset nope"),
        "{body}"
    );
    let (status, body) = page(&app, "/runs/not-a-run").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("invalid run id"), "{body}");

    // Launching from a form: a bad key is a page that says so; a good one
    // goes to the run's page.
    let form = |uri: &str, body: &str| {
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let response = app
        .router
        .clone()
        .oneshot(form(
            "/ui/assets/numbers/materialize",
            "partition=2024-02-30",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = app
        .router
        .clone()
        .oneshot(form(
            "/ui/assets/numbers/materialize",
            "partition=2024-01-03",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(location.starts_with("/runs/"), "{location}");
    let run = location.trim_start_matches("/runs/").to_owned();
    app.wait_run(&run).await;
    let (status, run_page) = page(&app, &location).await;
    assert_eq!(status, StatusCode::OK);
    assert!(run_page.contains("data-state=\"succeeded\""), "{run_page}");
    // A backfill of what exists has nothing to do, and the page says so.
    let response = app
        .router
        .clone()
        .oneshot(form(
            "/ui/assets/numbers/backfill",
            "from=2024-01-03&to=2024-01-03",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let back = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(back, "/assets/numbers?nothing=1");
    let (_, notice) = page(&app, &back).await;
    assert!(notice.contains("Nothing to do"), "{notice}");

    let (status, runs) = page(&app, "/runs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(runs.contains(&run[..8]));

    let (status, script) = page(&app, "/static/htmx-ext-sse.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(script.contains("defineExtension('sse'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_ask_to_sign_in_and_the_cookie_lets_in() {
    let secret = "read-secret-0123456789";
    let app = app_with(Tokens::none().with(secret, Right::Read)).await;
    let response = app.html_response("/").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/login");
    let (status, _) = page(&app, "/login").await;
    assert_eq!(status, StatusCode::OK);

    let login = |token: &str| {
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}")))
            .unwrap()
    };
    let refused = app
        .router
        .clone()
        .oneshot(login("wrong-0123456789abc"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(!refused.headers().contains_key(header::SET_COOKIE));
    let accepted = app.router.clone().oneshot(login(secret)).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::SEE_OTHER);
    let cookie = accepted.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let (status, _) = app
        .send(
            Request::get("/")
                .header(header::COOKIE, pair)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// Regression: signing in always landed on `/`, not on the page that sent
/// the user to sign in. The page is carried as `next`, and only a path on
/// this server is gone back to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_goes_back_to_the_page_that_asked_and_nowhere_else() {
    let secret = "read-secret-0123456789";
    let app = app_with(Tokens::none().with(secret, Right::Read)).await;
    let response = app.html_response("/runs?limit=5").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let to_login = response.headers()[header::LOCATION].to_str().unwrap();
    assert_eq!(to_login, "/login?next=%2Fruns%3Flimit%3D5");
    let (status, form) = page(&app, to_login).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        form.contains(r#"name="next" value="/runs?limit=5""#),
        "{form}"
    );

    let sign_in = |next: &str| {
        let body = format!("token={secret}&next={}", encode(next));
        let router = app.router.clone();
        async move {
            let response = router
                .oneshot(
                    Request::post("/login")
                        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(Body::from(body))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::SEE_OTHER);
            assert!(response.headers().contains_key(header::SET_COOKIE));
            response.headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(sign_in("/runs?limit=5").await, "/runs?limit=5");
    assert_eq!(sign_in("/assets/a%2Fb").await, "/assets/a%2Fb");
    for attempt in [
        "//evil.example/runs",
        "https://evil.example",
        "javascript:alert(1)",
        "/\\evil.example",
        "\\\\evil.example",
        "/\t/evil.example",
        "evil.example",
        "",
    ] {
        assert_eq!(sign_in(attempt).await, "/", "{attempt:?}");
    }

    // The sign-in page does not carry a foreign `next` either.
    let (_, form) = page(&app, "/login?next=%2F%2Fevil.example").await;
    assert!(!form.contains("name=\"next\""), "{form}");
}

/// Percent-encodes every byte but unreserved ones, as a form would.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Regression: a read-only token posting a dashboard form got the API's
/// JSON 403, and a read token posting to a path that does not exist got
/// 403 instead of 404. Pages now refuse with a page (the API keeps JSON),
/// and the right is checked only on routes that exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_refuse_with_a_page_and_unknown_routes_are_404_to_any_token() {
    let read = "read-secret-0123456789";
    let app = app_with(Tokens::none().with(read, Right::Read)).await;
    let raw = |method: Method, uri: &str, cookie: Option<&str>, referer: Option<&str>| {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "127.0.0.1:3000")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(secret) = cookie {
            request = request.header(header::COOKIE, format!("flowstone_token={secret}"));
        }
        if let Some(referer) = referer {
            request = request.header(header::REFERER, referer);
        }
        let router = app.router.clone();
        let request = request.body(Body::from("partition=2024-01-03")).unwrap();
        async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                content_type,
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
    };

    // A read token posting the asset page's form: a page that says why,
    // in the dashboard's layout, with a way to sign in and a way back.
    let (status, content_type, body) = raw(
        Method::POST,
        "/ui/assets/numbers/materialize",
        Some(read),
        Some("http://127.0.0.1:3000/assets/numbers"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(
        body.contains("403 · forbidden")
            && body.contains("launch right")
            && body.contains(r#"<header class="top">"#)
            && body.contains(r#"href="/login">Sign in with another token"#)
            && body.contains(r#"href="/assets/numbers">Back to the page you came from"#),
        "{body}"
    );
    // A referer from another host is not linked back to.
    let (_, _, body) = raw(
        Method::POST,
        "/ui/runs/0190b5d0-0000-7000-8000-000000000000/cancel",
        Some(read),
        Some("http://evil.example/assets/numbers"),
    )
    .await;
    assert!(
        body.contains(r#"href="/">Back to the asset graph"#) && !body.contains("evil"),
        "{body}"
    );

    // Without a token: a page asking to sign in (a form post is not sent
    // to the sign-in page, whose answer would lose the form).
    let (status, content_type, body) =
        raw(Method::POST, "/ui/assets/numbers/materialize", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(
        body.contains("401 · unauthorized") && body.contains(r#"href="/login">Sign in"#),
        "{body}"
    );

    // The API keeps JSON.
    let (status, content_type, body) = raw(Method::POST, "/api/v1/runs", Some(read), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert!(body.contains(r#""code":"forbidden""#), "{body}");

    // A path that does not exist is a 404 to a read token, whatever the
    // method; a route that exists without that method is a 405.
    for uri in ["/nope", "/api/v1/nope", "/ui/assets/numbers/nope"] {
        let (status, _, body) = raw(Method::POST, uri, Some(read), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
        assert!(body.contains(r#""code":"not_found""#), "{uri}: {body}");
    }
    let (status, _, body) = raw(Method::POST, "/runs", Some(read), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    // Without a token, even an unknown path is refused first: it tells
    // nothing about which routes exist.
    let (status, _, _) = raw(Method::POST, "/nope", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_node_detail_for_an_asset_and_refusals() {
    let app = app().await;
    let (status, detail) = page(&app, "/ui/graph/node?id=a:total").await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert!(detail.contains("data-node=\"a:total\""), "{detail}");
    assert!(
        detail.contains("data-select=\"a:numbers\""),
        "reads numbers: {detail}"
    );
    assert!(detail.contains("of 31 partitions"), "{detail}");

    let (status, body) = page(&app, "/ui/graph/node?id=a:nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = page(&app, "/ui/graph/node?id=numbers").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("neither a:ASSET nor g:GROUP"), "{body}");
    let (status, body) = page(&app, "/ui/graph/node?id=g:numbers").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no groups in a small graph: {body}"
    );

    let (status, graph) = page(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(graph.contains("/static/graph.js") && graph.contains("id=\"zoom-in\""));
    assert!(
        !graph.contains("id=\"grouping\""),
        "a small graph is not grouped"
    );
    let (status, script) = page(&app, "/static/graph.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(script.contains("viewBox"));
}

/// 240 assets in the groups `dom0` .. `dom5` (by key prefix), each group a
/// chain reading the previous group's last asset.
fn many_assets() -> Definitions {
    let mut builder = Definitions::builder();
    for i in 0..240 {
        let mut asset = AssetBuilder::new(format!("dom{}/t{i:03}", i / 40));
        if i > 0 {
            let up = format!("dom{}/t{:03}", (i - 1) / 40, i - 1);
            asset = asset.dep::<u32>(up);
        }
        builder = builder.add_asset(asset.compute(|_ctx, _inputs| async move { Ok(1u32) }));
    }
    builder.build().expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_graphs_are_grouped_and_groups_open_on_request() {
    let app = app_of(many_assets(), Tokens::none()).await;
    let (status, graph) = page(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        graph.matches("class=\"node group state-").count(),
        6,
        "{graph}"
    );
    assert!(graph.contains("data-group=\"dom2\" data-members=\"40\""));
    assert!(graph.contains("240 assets drawn as 6 nodes"), "{graph}");
    assert!(graph.contains("○ 40"), "counts by state: {graph}");

    // A group's detail lists its members; opening it draws them.
    let (status, detail) = page(&app, "/ui/graph/node?id=g:dom2").await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert!(detail.contains("40 assets"), "{detail}");
    assert!(detail.contains("/assets/dom2%2Ft085"), "{detail}");
    assert!(detail.contains("href=\"/?expand=dom2\""), "{detail}");

    let (status, open) = page(&app, "/?expand=dom2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(open.matches("class=\"node group state-").count(), 5);
    assert_eq!(open.matches("class=\"node state-").count(), 40);
    assert!(
        open.contains("hx-get=\"/ui/graph?expand=dom2\""),
        "redraws keep the grouping"
    );
    let (_, fragment) = page(&app, "/ui/graph?expand=dom2").await;
    assert_eq!(fragment.matches("class=\"node state-").count(), 40);
    let (status, detail) = page(&app, "/ui/graph/node?id=g:dom2&expand=dom2").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an open group is no node: {detail}"
    );

    let (_, all) = page(&app, "/?expand=all").await;
    assert_eq!(all.matches("class=\"node state-").count(), 240);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_page_charts_numeric_metadata_by_partition() {
    let app = app().await;
    let (_, before) = page(&app, "/assets/numbers").await;
    assert!(
        before.contains("No numeric metadata recorded yet"),
        "{before}"
    );
    app.materialize("numbers", "2024-01-03").await;
    app.materialize("numbers", "2024-01-09").await;

    // Both keys are offered, rows first; a bar per partition, each linking
    // to its materialization.
    let (status, asset) = page(&app, "/assets/numbers").await;
    assert_eq!(status, StatusCode::OK);
    assert!(asset.contains("data-metric=\"rows\""), "{asset}");
    assert!(asset.contains("<option value=\"day_of_month\">"), "{asset}");
    assert_eq!(asset.matches("class=\"bar\"").count(), 2);
    assert!(asset.contains("<title>2024-01-09: 3</title>"), "{asset}");
    assert!(
        asset.contains("href=\"/assets/numbers?partition=2024-01-09&amp;metric=rows\""),
        "{asset}"
    );
    let (status, chart) = page(&app, "/ui/assets/numbers/chart?metric=day_of_month").await;
    assert_eq!(status, StatusCode::OK);
    assert!(chart.contains("data-metric=\"day_of_month\""), "{chart}");
    assert!(chart.contains("<title>2024-01-09: 9</title>"), "{chart}");
    assert!(
        chart.contains("<option value=\"day_of_month\" selected>"),
        "{chart}"
    );
    assert!(chart.contains("hx-get=\"/ui/assets/numbers/chart?metric=day_of_month\""));

    // A heatmap cell opens its materialization with the metadata.
    let (_, cell) = page(&app, "/assets/numbers?partition=2024-01-09").await;
    assert!(cell.contains("id=\"materialization\""), "{cell}");
    assert!(
        cell.contains("day_of_month") && cell.contains("<code>9</code>"),
        "{cell}"
    );

    let (status, body) = page(&app, "/ui/assets/numbers/chart?metric=nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("it has rows, day_of_month"), "{body}");
    let (status, _) = page(&app, "/ui/assets/nope/chart").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, config) = page(&app, "/assets/config").await;
    assert!(
        !config.contains("id=\"chart\""),
        "no chart for an unpartitioned asset"
    );
}
