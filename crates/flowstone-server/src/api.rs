//! The JSON API under `/api/v1`, and the event stream.
//!
//! Every route is in [`table`], which builds the router and which the
//! OpenAPI test compares with the document, so a route cannot be served
//! without being documented. Handlers take their extractors as `Result`s and
//! turn rejections into [`ApiError`], so a malformed body or query gets the
//! same JSON error shape as every other mistake.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use flowstone_core::asset::AssetDef;
use flowstone_core::query::Direction;
use flowstone_core::store::{EventRecord, MaterializationRecord};
use flowstone_core::{
    AssetKey, Engine, EventId, Launch, MaterializationId, PartitionSelection, RunId, RunRequest,
    Trigger,
};
use flowstone_partitions::PartitionKeyError;
use futures::StreamExt as _;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{Credential, Principal, Verdict};
use crate::error::{ApiError, ApiResult};
use crate::feed::{ClientStream, Filter};
use crate::status::{AssetView, Snapshot};

/// The largest page of partitions, runs or events one request returns.
pub const MAX_PAGE: u64 = 10_000;

/// Every API route: method, path, handler.
pub(crate) fn table() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/api/openapi.json", get(openapi)),
        (Method::GET, "/api/v1/health", get(health)),
        (Method::GET, "/api/v1/assets", get(list_assets)),
        (Method::GET, "/api/v1/assets/{key}", get(one_asset)),
        (
            Method::GET,
            "/api/v1/assets/{key}/partitions",
            get(partitions),
        ),
        (
            Method::GET,
            "/api/v1/assets/{key}/partitions/ranges",
            get(ranges),
        ),
        (
            Method::GET,
            "/api/v1/assets/{key}/materializations/latest",
            get(latest),
        ),
        (Method::GET, "/api/v1/assets/{key}/lineage", get(lineage)),
        (Method::GET, "/api/v1/assets/{key}/impact", get(impact)),
        (
            Method::GET,
            "/api/v1/materializations/{id}",
            get(materialization),
        ),
        (Method::GET, "/api/v1/runs", get(list_runs)),
        (Method::POST, "/api/v1/runs", post(launch)),
        (Method::GET, "/api/v1/runs/{id}", get(one_run)),
        (Method::GET, "/api/v1/runs/{id}/events", get(run_events)),
        (Method::POST, "/api/v1/runs/{id}/cancel", post(cancel)),
        (Method::POST, "/api/v1/runs/{id}/resume", post(resume)),
        (Method::GET, "/api/v1/events", get(stream)),
    ]
}

/// The methods and paths of [`table`], for the OpenAPI test.
pub fn api_routes() -> Vec<(Method, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

pub(crate) fn routes(_state: AppState) -> Router<AppState> {
    let mut router = Router::new();
    for (_, path, handler) in table() {
        router = router.route(path, handler);
    }
    router
}

// -- fallbacks -----------------------------------------------------------------

pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route {}; the API is under /api/v1 and described at /api/openapi.json",
        uri.path()
    ))
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} does not accept {method}; /api/openapi.json lists the methods of each path",
        uri.path()
    ))
}

pub(crate) fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a handler panicked".to_owned()).into_response()
}

// -- small helpers -------------------------------------------------------------

fn asset_def<'s>(state: &'s AppState, key: &str) -> ApiResult<&'s Arc<AssetDef>> {
    state.engine().definitions().lookup(key).map_err(|message| {
        ApiError::UnknownAsset(format!("{message}; GET /api/v1/assets lists them"))
    })
}

fn path_key(path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    Ok(path?.0)
}

fn run_id(path: Result<Path<String>, PathRejection>) -> ApiResult<RunId> {
    let text = path?.0;
    text.parse::<RunId>()
        .map_err(|err| ApiError::BadRequest(err.to_string()))
}

async fn snapshot(state: &AppState) -> ApiResult<Arc<Snapshot>> {
    Ok(state.inner.status.snapshot(state.engine()).await?)
}

fn view<'s>(snapshot: &'s Snapshot, key: &AssetKey) -> ApiResult<&'s AssetView> {
    snapshot
        .assets
        .get(key)
        .map(|v| &**v)
        .ok_or_else(|| ApiError::Internal(format!("no status computed for {key}")))
}

/// Checks a partition key against an asset, saying what is accepted.
fn partition_of(def: &AssetDef, key: Option<&str>) -> ApiResult<Option<String>> {
    let now = Timestamp::now();
    match (&def.partitions, key) {
        (Some(p), Some(key)) => p
            .parse_key(key, now)
            .map(|k| Some(k.as_str().to_owned()))
            .map_err(|err| ApiError::BadPartition(format!("asset {}: {err}", def.key))),
        (Some(p), None) => Err(ApiError::BadPartition(format!(
            "asset {} is partitioned ({}); give ?partition=KEY, e.g. ?partition={}",
            def.key,
            p.describe(),
            p.example_key(now)
        ))),
        (None, Some(_)) => Err(ApiError::BadPartition(format!(
            "asset {} is not partitioned; leave out ?partition",
            def.key
        ))),
        (None, None) => Ok(None),
    }
}

fn limit(given: Option<u64>, default: u64) -> ApiResult<u64> {
    match given {
        None => Ok(default),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit {n} is out of range; give 1 to {MAX_PAGE}"
        ))),
    }
}

// -- meta ----------------------------------------------------------------------

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "assets": state.engine().definitions().len(),
    }))
}

// -- assets --------------------------------------------------------------------

fn asset_json(state: &AppState, def: &AssetDef, view: Option<&AssetView>) -> Value {
    let defs = state.engine().definitions();
    let now = Timestamp::now();
    let partitions = def.partitions.as_ref().map(|p| {
        json!({
            "kind": p.kind_name(),
            "description": p.describe(),
            "count": p.len(now),
            "dimensions": p.dimensions(),
        })
    });
    let latest = view.and_then(AssetView::latest).map(|(partition, id, at)| {
        json!({
            "materialization_id": id,
            "partition": partition,
            "finished_at": at,
        })
    });
    json!({
        "key": def.key,
        "description": def.description,
        "group": def.group,
        "code_version": def.code_version,
        "queue": def.queue,
        "queue_limit": defs.queue_limits().get(&def.queue),
        "owners": def.owners,
        "tags": def.tags,
        "upstream": defs.upstream_of(&def.key).iter().map(|d| &d.key).collect::<Vec<_>>(),
        "downstream": defs.downstream_of(&def.key).iter().map(|d| &d.key).collect::<Vec<_>>(),
        "partitions": partitions,
        "counts": view.map(|v| v.counts),
        "latest": latest,
    })
}

async fn list_assets(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let snapshot = snapshot(&state).await?;
    let assets: Vec<Value> = state
        .engine()
        .definitions()
        .assets()
        .map(|def| asset_json(&state, def, snapshot.assets.get(&def.key).map(|v| &**v)))
        .collect();
    Ok(Json(json!({ "assets": assets })))
}

async fn one_asset(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let def = asset_def(&state, &path_key(key)?)?;
    let snapshot = snapshot(&state).await?;
    Ok(Json(asset_json(
        &state,
        def,
        snapshot.assets.get(&def.key).map(|v| &**v),
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionsQuery {
    offset: Option<u64>,
    limit: Option<u64>,
    state: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

const STATES: [&str; 4] = ["materialized", "stale", "failed", "missing"];

async fn partitions(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<PartitionsQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let def = asset_def(&state, &path_key(key)?)?;
    let Query(query) = query?;
    let Some(p) = &def.partitions else {
        return Err(ApiError::BadPartition(format!(
            "asset {} is not partitioned; GET /api/v1/assets/{} has its status",
            def.key, def.key
        )));
    };
    let now = Timestamp::now();
    let limit = limit(query.limit, 100)?;
    let total = p.len(now);

    // A key range turns into an index range.
    let mut offset = query.offset.unwrap_or(0);
    let mut end = u64::MAX;
    match (&query.from, &query.to) {
        (Some(from), Some(to)) => {
            if query.offset.is_some() {
                return Err(ApiError::BadRequest(
                    "give either offset or from and to, not both".to_owned(),
                ));
            }
            let range = p.range(from, to, now).map_err(|err| match err {
                PartitionKeyError::ReversedRange { .. } => {
                    ApiError::BadRange(format!("asset {}: {err}; give from before to", def.key))
                }
                other => ApiError::BadPartition(format!("asset {}: {other}", def.key)),
            })?;
            offset = range.start;
            end = range.end;
        }
        (None, None) => {}
        _ => {
            return Err(ApiError::BadRange(
                "give both from and to (partition keys, both included), or neither".to_owned(),
            ));
        }
    }

    let snapshot = snapshot(&state).await?;
    let view = view(&snapshot, &def.key)?;
    let rows = match query.state.as_deref() {
        None => view.page(p, offset, limit.min(end.saturating_sub(offset)), now),
        Some(wanted) if STATES.contains(&wanted) => {
            if end != u64::MAX {
                return Err(ApiError::BadRequest(
                    "state cannot be combined with from and to yet; page with offset".to_owned(),
                ));
            }
            view.page_in_state(p, wanted, offset, limit, now)
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown state {other:?}; give one of {}",
                STATES.join(", ")
            )));
        }
    };
    Ok(Json(json!({
        "asset": def.key,
        "total": total,
        "counts": view.counts,
        "offset": offset,
        "limit": limit,
        "partitions": rows,
    })))
}

async fn ranges(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let def = asset_def(&state, &path_key(key)?)?;
    let Some(p) = &def.partitions else {
        return Err(ApiError::BadPartition(format!(
            "asset {} is not partitioned; it has no partition ranges",
            def.key
        )));
    };
    let now = Timestamp::now();
    let snapshot = snapshot(&state).await?;
    let view = view(&snapshot, &def.key)?;
    Ok(Json(json!({
        "asset": def.key,
        "total": p.len(now),
        "counts": view.counts,
        "ranges": view.ranges(p, now),
    })))
}

// -- materializations and lineage -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionQuery {
    partition: Option<String>,
}

async fn with_neighbours(state: &AppState, record: MaterializationRecord) -> ApiResult<Value> {
    let store = state.engine().store();
    let inputs: Vec<MaterializationRecord> = store
        .inputs_of(&[record.id])
        .await?
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    let consumers: Vec<MaterializationRecord> = store
        .consumers_of(&[record.id])
        .await?
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    Ok(json!({ "materialization": record, "inputs": inputs, "consumers": consumers }))
}

/// The latest materialization of an asset partition, or a 404 that says so.
async fn latest_of(
    state: &AppState,
    def: &AssetDef,
    partition: Option<&str>,
) -> ApiResult<MaterializationRecord> {
    let target = state.engine().target(def.key.as_str(), partition)?;
    let found = state
        .engine()
        .store()
        .latest_materializations(std::slice::from_ref(&target))
        .await?;
    found.into_iter().next().ok_or_else(|| {
        ApiError::NotFound(format!(
            "{target} has never been materialized; POST /api/v1/runs materializes it"
        ))
    })
}

async fn latest(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<PartitionQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let def = asset_def(&state, &path_key(key)?)?;
    let Query(query) = query?;
    let partition = partition_of(def, query.partition.as_deref())?;
    let record = latest_of(&state, def, partition.as_deref()).await?;
    Ok(Json(with_neighbours(&state, record).await?))
}

async fn materialization(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let text = id?.0;
    let id: i64 = text.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid materialization id {text:?}: expected a whole number such as 42"
        ))
    })?;
    let record = state
        .engine()
        .store()
        .materialization(MaterializationId(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no materialization with id {id}")))?;
    Ok(Json(with_neighbours(&state, record).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineageQuery {
    partition: Option<String>,
    direction: Option<String>,
    depth: Option<u32>,
}

async fn lineage(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<LineageQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let def = asset_def(&state, &path_key(key)?)?;
    let Query(query) = query?;
    let direction = match query.direction.as_deref() {
        None | Some("upstream") => Direction::Upstream,
        Some("downstream") => Direction::Downstream,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown direction {other:?}; give upstream or downstream"
            )));
        }
    };
    if query.depth == Some(0) {
        return Err(ApiError::BadRequest(
            "depth 0 follows nothing; give 1 or more, or leave it out for all".to_owned(),
        ));
    }
    let partition = partition_of(def, query.partition.as_deref())?;
    latest_of(&state, def, partition.as_deref()).await?;
    let lineage = state
        .engine()
        .lineage_to_depth(
            def.key.as_str(),
            partition.as_deref(),
            direction,
            query.depth,
        )
        .await?;
    Ok(Json(serde_json::to_value(lineage).unwrap_or_default()))
}

async fn impact(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<PartitionQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let def = asset_def(&state, &path_key(key)?)?;
    let Query(query) = query?;
    let partition = partition_of(def, query.partition.as_deref())?;
    let impact = state
        .engine()
        .impact(def.key.as_str(), partition.as_deref())?;
    Ok(Json(json!({
        "asset": def.key,
        "partition": partition,
        "impact": impact,
    })))
}

// -- runs ----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    limit: Option<u64>,
}

async fn list_runs(
    State(state): State<AppState>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(query) = query?;
    let limit = limit(query.limit, 50)?;
    let runs = state.engine().store().runs(limit as u32).await?;
    Ok(Json(json!({ "runs": runs })))
}

async fn one_run(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = run_id(id)?;
    let store = state.engine().store();
    let run = store.run(id).await?.ok_or_else(|| unknown_run(id))?;
    let steps = store.steps(id).await?;
    Ok(Json(json!({ "run": run, "steps": steps })))
}

fn unknown_run(id: RunId) -> ApiError {
    ApiError::UnknownRun(format!("no run with id {id}; GET /api/v1/runs lists them"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<i64>,
    limit: Option<u64>,
}

async fn run_events(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let id = run_id(id)?;
    let Query(query) = query?;
    let limit = limit(query.limit, 1000)?;
    let store = state.engine().store();
    store.run(id).await?.ok_or_else(|| unknown_run(id))?;
    let events = store
        .events(id, query.after.map(EventId), limit as u32)
        .await?;
    let next_after = events.last().map(|e| e.id);
    Ok(Json(json!({ "events": events, "next_after": next_after })))
}

async fn cancel(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = run_id(id)?;
    let cancelled = state.engine().cancel(id).await?;
    state.inner.feed.wake();
    Ok(Json(json!({ "run_id": id, "cancelled": cancelled })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeQuery {
    max_parallel: Option<u64>,
}

async fn resume(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<ResumeQuery>, QueryRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = run_id(id)?;
    let Query(query) = query?;
    let parallel = max_parallel(query.max_parallel)?;
    let principal = principal.map(|Extension(p)| p);
    let engine = acting_engine(&state, principal.as_ref());
    let handle = engine.resume(id, parallel).await?;
    state.inner.runs.adopt(handle);
    state.inner.feed.wake();
    Ok((StatusCode::ACCEPTED, Json(json!({ "run_id": id }))))
}

fn max_parallel(given: Option<u64>) -> ApiResult<usize> {
    match given {
        None => Ok(flowstone_core::default_parallelism()),
        Some(n) if (1..=4096).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::BadRequest(format!(
            "max_parallel {n} is out of range; give 1 to 4096"
        ))),
    }
}

/// What to materialize: the body of `POST /api/v1/runs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// Asset keys; empty means every asset.
    #[serde(default)]
    pub assets: Vec<String>,
    /// `materialize` (re-run what exists) or `backfill` (skip it).
    #[serde(default)]
    pub mode: Option<String>,
    /// Partition keys.
    #[serde(default)]
    pub partitions: Vec<String>,
    /// A range of partition keys, both included.
    pub from: Option<String>,
    pub to: Option<String>,
    /// Every partition.
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub with_upstream: bool,
    /// In a backfill, run materialized partitions too.
    #[serde(default)]
    pub force: bool,
    /// In a backfill, run stale partitions too.
    #[serde(default)]
    pub stale: bool,
    pub max_parallel: Option<u64>,
}

impl LaunchRequest {
    /// Checks the request and turns it into the engine's.
    pub(crate) fn into_run_request(self, state: &AppState) -> ApiResult<RunRequest> {
        let defs = state.engine().definitions();
        let mut assets = Vec::with_capacity(self.assets.len());
        for name in &self.assets {
            assets.push(asset_def(state, name)?.key.clone());
        }
        let selection = match (&self.from, &self.to, self.all, self.partitions.is_empty()) {
            (None, None, false, true) => PartitionSelection::Unspecified,
            (None, None, false, false) => PartitionSelection::Keys(self.partitions.clone()),
            (None, None, true, true) => PartitionSelection::All,
            (Some(from), Some(to), false, true) => {
                check_range(defs, &assets, from, to)?;
                PartitionSelection::Range {
                    from: from.clone(),
                    to: to.clone(),
                }
            }
            (Some(_), None, _, _) | (None, Some(_), _, _) => {
                return Err(ApiError::BadRange(
                    "give both \"from\" and \"to\" (partition keys, both included), or neither"
                        .to_owned(),
                ));
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "give one of \"partitions\", \"from\" and \"to\", or \"all\": true".to_owned(),
                ));
            }
        };
        let parallel = max_parallel(self.max_parallel)?;
        let request = match self.mode.as_deref() {
            None | Some("materialize") => {
                if self.force || self.stale {
                    return Err(ApiError::BadRequest(
                        "\"force\" and \"stale\" apply to mode \"backfill\"; materialize always \
                         re-runs what it selects"
                            .to_owned(),
                    ));
                }
                RunRequest::materialize(assets, selection)
            }
            Some("backfill") => {
                if self.force && self.stale {
                    return Err(ApiError::BadRequest(
                        "give \"force\" or \"stale\", not both: force already runs stale \
                         partitions"
                            .to_owned(),
                    ));
                }
                RunRequest::backfill(assets, selection)
                    .force(self.force)
                    .refresh_stale(self.stale)
            }
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "unknown mode {other:?}; give \"materialize\" or \"backfill\""
                )));
            }
        };
        Ok(request
            .with_upstream(self.with_upstream)
            .trigger(Trigger::Api)
            .max_parallel(parallel))
    }
}

/// A reversed range is refused before planning, with the asset that shows it.
fn check_range(
    defs: &flowstone_core::Definitions,
    assets: &[AssetKey],
    from: &str,
    to: &str,
) -> ApiResult<()> {
    let now = Timestamp::now();
    let mut selected: Vec<&AssetDef> = assets
        .iter()
        .filter_map(|k| defs.asset(k))
        .map(|a| &**a)
        .collect();
    if selected.is_empty() {
        selected = defs.assets().map(|a| &**a).collect();
    }
    for def in selected {
        let Some(p) = &def.partitions else { continue };
        match p.range(from, to, now) {
            Ok(_) => return Ok(()),
            Err(err @ PartitionKeyError::ReversedRange { .. }) => {
                return Err(ApiError::BadRange(format!(
                    "asset {}: {err}; give \"from\" before \"to\"",
                    def.key
                )));
            }
            // Another cadence may still accept it: the planner decides.
            Err(_) => continue,
        }
    }
    Ok(())
}

/// The engine that acts for a request: runs it launches or resumes are
/// recorded as started by its token (`token:NAME`), or by the server's user
/// when no token is needed.
pub(crate) fn acting_engine(state: &AppState, principal: Option<&Principal>) -> Engine {
    let engine = state.engine().clone();
    match principal {
        Some(principal) => engine.with_user(format!("token:{}", principal.name)),
        None => engine,
    }
}

/// Why a launch started no run: what is materialized, and what other runs
/// hold (the store keeps one live step per asset partition).
fn nothing_to_do_message(plan: &flowstone_core::plan::Plan) -> String {
    let (done, queued) = (plan.already_materialized, plan.already_queued);
    if queued == 0 {
        return format!(
            "nothing to do: all {done} selected asset partitions are already materialized \
             (\"force\": true runs them again)"
        );
    }
    let done = if done > 0 {
        format!("{done} selected asset partitions are already materialized and ")
    } else {
        "all ".to_owned()
    };
    format!(
        "nothing to do: {done}{queued} are queued or running in other runs (e.g. {}); \
         resume an interrupted run or cancel it to free its partitions",
        plan.already_queued_examples.join(", ")
    )
}

/// Launches a run and works on it in this process.
pub(crate) async fn launch_run(
    state: &AppState,
    principal: Option<&Principal>,
    request: LaunchRequest,
) -> ApiResult<(StatusCode, Value)> {
    let request = request.into_run_request(state)?;
    match acting_engine(state, principal).launch(request).await? {
        Launch::NothingToDo { plan } => Ok((
            StatusCode::OK,
            json!({
                "run_id": null,
                "steps": 0,
                "already_materialized": plan.already_materialized,
                "already_queued": plan.already_queued,
                "already_queued_examples": plan.already_queued_examples,
                "left_out": plan.left_out,
                "message": nothing_to_do_message(&plan),
            }),
        )),
        Launch::Started { run, plan, handle } => {
            state.inner.runs.adopt(handle);
            state.inner.feed.wake();
            Ok((
                StatusCode::CREATED,
                json!({
                    "run_id": run.id,
                    "state": run.state,
                    "description": run.description,
                    "steps": run.steps.total(),
                    "already_materialized": plan.already_materialized,
                    "left_out": plan.left_out,
                }),
            ))
        }
    }
}

async fn launch(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    body: Result<Json<LaunchRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(body) = body?;
    let principal = principal.map(|Extension(p)| p);
    let (status, value) = launch_run(&state, principal.as_ref(), body).await?;
    Ok((status, Json(value)))
}

// -- the event stream ------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    after: Option<i64>,
    run: Option<String>,
}

async fn stream(
    State(state): State<AppState>,
    credential: Option<Extension<Credential>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>> {
    let Query(query) = query?;
    let run = match &query.run {
        Some(text) => {
            let id = text
                .parse::<RunId>()
                .map_err(|err| ApiError::BadRequest(err.to_string()))?;
            state
                .engine()
                .store()
                .run(id)
                .await?
                .ok_or_else(|| unknown_run(id))?;
            Some(id)
        }
        None => None,
    };
    // A reconnecting browser sends the last id it saw.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = resumed.or(query.after).map(EventId);
    let client = ClientStream::open(
        &state.inner.feed,
        state.engine().store().clone(),
        after,
        Filter { run },
    )
    .await?;
    let events = futures::stream::unfold(client, |mut client| async move {
        let event = client.next().await?;
        Some((Ok(sse_event(&event)), client))
    });
    // The stream outlives the request's check: it ends once its token (or,
    // on an open server, the lack of one) would be refused.
    let credential = credential.map(|Extension(c)| c);
    let events = events.take_until(Box::pin(until_refused(state, credential)));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Completes once a request presenting `credential` (or none) would be
/// refused, checking every [`AppState::recheck_streams_every`]. A store
/// that cannot answer is logged and asked again at the next check: the
/// revocation it would record cannot be read either.
async fn until_refused(state: AppState, credential: Option<Credential>) {
    let every = state.stream_recheck();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match state.inner.auth.check_credential(credential).await {
            Ok(Verdict::Valid(_) | Verdict::Open) => {}
            Ok(Verdict::Refused(_)) => {
                tracing::debug!(target: "flowstone::server",
                                "event stream ended: its token is no longer valid");
                return;
            }
            Err(err) => {
                tracing::warn!(target: "flowstone::server", error = %err,
                               "cannot check an event stream's token; trying again");
            }
        }
    }
}

fn sse_event(event: &EventRecord) -> Event {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    Event::default()
        .id(event.id.to_string())
        .event(event.kind.as_str())
        .data(data)
}
