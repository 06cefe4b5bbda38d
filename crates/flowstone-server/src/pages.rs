//! The dashboard: server-rendered pages (maud) that htmx refreshes when the
//! event stream says something changed. No page polls on a timer: a
//! fragment is fetched again only when an event of the kinds it shows
//! arrives over `/api/v1/events`.
//!
//! The scripts (htmx, its SSE extension, and our own `graph.js` for the
//! graph's pan, zoom and selection) and the style sheet are compiled into
//! the binary; nothing is loaded from another host.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::Router;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use flowstone_core::store::{EventRecord, RunRecord, StepRecord, StepState};
use flowstone_core::{AssetKey, RunId};
use jiff::Timestamp;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use crate::AppState;
use crate::api::LaunchRequest;
use crate::auth::{Principal, Right, Verdict};
use crate::error::{ApiError, ApiResult};
use crate::graph::{Grouping, NodeInfo, NodeState, ViewNode};

const HTMX: &str = include_str!("../assets/vendor/htmx.min.js");
const HTMX_SSE: &str = include_str!("../assets/vendor/htmx-ext-sse.js");
const GRAPH_JS: &str = include_str!("../assets/graph.js");
const STYLE: &str = include_str!("../assets/style.css");

pub(crate) fn routes(_state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(graph_page))
        .route("/ui/graph", get(graph_fragment))
        .route("/ui/graph/node", get(graph_node))
        .route("/assets/{key}", get(asset_page))
        .route("/ui/assets/{key}/partitions", get(asset_fragment))
        .route("/ui/assets/{key}/chart", get(chart_route))
        .route("/ui/assets/{key}/materialize", post(materialize))
        .route("/ui/assets/{key}/backfill", post(backfill))
        .route("/runs", get(runs_page))
        .route("/ui/runs", get(runs_fragment))
        .route("/runs/{id}", get(run_page))
        .route("/ui/runs/{id}", get(run_fragment))
        .route("/ui/runs/{id}/cancel", post(cancel))
        .route("/login", get(login_page).post(login))
        .route("/logout", get(logout))
        .route("/static/htmx.min.js", get(|| script(HTMX)))
        .route("/static/htmx-ext-sse.js", get(|| script(HTMX_SSE)))
        .route("/static/graph.js", get(|| script(GRAPH_JS)))
        .route("/static/style.css", get(style))
}

async fn script(body: &'static str) -> Response {
    static_file(body, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    static_file(STYLE, "text/css; charset=utf-8")
}

fn static_file(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// An error as a page (for a browser) rather than JSON.
struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(err: ApiError) -> Self {
        PageError(err)
    }
}

impl From<flowstone_core::EngineError> for PageError {
    fn from(err: flowstone_core::EngineError) -> Self {
        PageError(err.into())
    }
}

impl From<flowstone_core::StoreError> for PageError {
    fn from(err: flowstone_core::StoreError) -> Self {
        PageError(err.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(self.0, None, "/")
    }
}

/// A refusal made before a handler runs (no token, a token without the
/// right, a body too large): JSON for the API (`/api/...`), a page in the
/// dashboard's layout for every other path, with a link to sign in when a
/// token is the matter and a link back to the page the request came from.
pub(crate) fn refusal<B>(request: &axum::http::Request<B>, err: ApiError) -> Response {
    let path = request.uri().path();
    if path == "/api" || path.starts_with("/api/") {
        return err.into_response();
    }
    let sign_in = match err {
        ApiError::Unauthorized(_) | ApiError::Forbidden(_) => {
            Some(if request.method() == axum::http::Method::GET {
                login_href(request.uri())
            } else {
                "/login".to_owned()
            })
        }
        _ => None,
    };
    let back = came_from(request.headers()).unwrap_or_else(|| "/".to_owned());
    error_page(err, sign_in.as_deref(), &back)
}

/// The page of this server a request came from, by its `Referer`: only
/// when that names this host, and only its local path.
fn came_from(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let uri: axum::http::Uri = referer.parse().ok()?;
    if uri.authority()?.as_str() != host {
        return None;
    }
    let path = uri.path_and_query()?.as_str();
    local_path(path).map(str::to_owned)
}

/// An error as a page: its status, code and message, a link to sign in
/// (`sign_in`, for 401 and 403) and one back to `back`.
fn error_page(err: ApiError, sign_in: Option<&str>, back: &str) -> Response {
    let status = err.status();
    err.log("page");
    let message = match &err {
        // The API's words name a header; a browser signs in instead.
        ApiError::Unauthorized(false) => "This page needs an API token: sign in with one.".into(),
        ApiError::Unauthorized(true) => {
            "The token you signed in with is not valid here any more (unknown, revoked or \
             expired): sign in with another."
                .into()
        }
        other => other.public_message(),
    };
    let title = match status {
        StatusCode::UNAUTHORIZED => "Sign in needed",
        StatusCode::FORBIDDEN => "Not allowed",
        _ => "Error",
    };
    let body = layout(
        title,
        html! {
            div.error role="alert" {
                h1 { (status.as_u16()) " · " (err.code()) }
                p { (message) }
                p {
                    @if let Some(href) = sign_in {
                        a href=(href) {
                            @if matches!(err, ApiError::Forbidden(_)) {
                                "Sign in with another token"
                            } @else { "Sign in" }
                        }
                        " · "
                    }
                    @if back == "/" { a href="/" { "Back to the asset graph" } }
                    @else { a href=(back) { "Back to the page you came from" } }
                }
            }
        },
    );
    let mut response = (status, body).into_response();
    if matches!(err, ApiError::Unauthorized(_)) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

type PageResult<T> = Result<T, PageError>;

fn layout(title: &str, body: Markup) -> Html<String> {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · FlowStone" }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/htmx.min.js" {}
                script src="/static/htmx-ext-sse.js" {}
            }
            body {
                header.top {
                    a.brand href="/" { "FlowStone" }
                    nav {
                        a href="/" { "Assets" }
                        a href="/runs" { "Runs" }
                        a href="/api/openapi.json" { "API" }
                    }
                    @if let Some(who) = crate::auth::signed_in() {
                        span.who {
                            "token " strong { (who.name) } " (" (who.right) ") "
                            a href="/logout" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    Html(page.into_string())
}

fn href_asset(key: &AssetKey) -> String {
    format!("/assets/{}", key.as_str().replace('/', "%2F"))
}

fn short(id: RunId) -> String {
    id.to_string().chars().take(8).collect()
}

fn when(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

// -- the graph ---------------------------------------------------------------------

/// Assets with a step that may still run, in any run.
async fn running_assets(state: &AppState) -> ApiResult<HashSet<AssetKey>> {
    let live = state.engine().store().live_assets().await?;
    Ok(live.into_iter().collect())
}

/// An asset's state on the graph: running before failed before stale
/// before missing.
fn node_state(counts: &flowstone_core::query::StatusCounts, running: bool) -> NodeState {
    if running {
        NodeState::Running
    } else if counts.failed > 0 {
        NodeState::Failed
    } else if counts.stale > 0 {
        NodeState::Stale
    } else if counts.missing > 0 {
        NodeState::Missing
    } else {
        NodeState::Fresh
    }
}

/// Every asset's state on the graph.
async fn asset_states(
    state: &AppState,
) -> ApiResult<(
    std::sync::Arc<crate::status::Snapshot>,
    HashMap<AssetKey, NodeState>,
)> {
    let snapshot = state.inner.status.snapshot(state.engine()).await?;
    let running = running_assets(state).await?;
    let states = snapshot
        .assets
        .iter()
        .map(|(key, view)| (key.clone(), node_state(&view.counts, running.contains(key))))
        .collect();
    Ok((snapshot, states))
}

/// Assets counted by state, in the order of [`NodeState::ALL`].
fn count_states<'k>(
    keys: impl Iterator<Item = &'k AssetKey>,
    states: &HashMap<AssetKey, NodeState>,
) -> Vec<(NodeState, usize)> {
    let mut counts: HashMap<NodeState, usize> = HashMap::new();
    for key in keys {
        let s = states.get(key).copied().unwrap_or(NodeState::Missing);
        *counts.entry(s).or_default() += 1;
    }
    NodeState::ALL
        .iter()
        .filter_map(|s| counts.get(s).map(|&c| (*s, c)))
        .collect()
}

fn graph_grouping(state: &AppState, expand: Option<&str>) -> Grouping {
    Grouping::new(state.engine().definitions(), expand)
}

async fn graph_svg(state: &AppState, grouping: &Grouping) -> ApiResult<String> {
    let defs = state.engine().definitions();
    let drawn = state.inner.layouts.get(defs, grouping);
    let (snapshot, states) = asset_states(state).await?;
    let info: Vec<NodeInfo> = drawn
        .view
        .nodes
        .iter()
        .map(|node| match node {
            ViewNode::Asset(key) => {
                let detail = snapshot.assets.get(key).map_or(String::new(), |v| {
                    let c = v.counts;
                    format!("{}/{}", c.materialized + c.stale, c.total)
                });
                NodeInfo {
                    state: states.get(key).copied().unwrap_or(NodeState::Missing),
                    detail,
                }
            }
            ViewNode::Group { members, .. } => {
                let counts = count_states(members.iter(), &states);
                let detail = counts
                    .iter()
                    .map(|(s, c)| format!("{} {c}", s.marker()))
                    .collect::<Vec<_>>()
                    .join("  ");
                NodeInfo {
                    // The most urgent state of any member.
                    state: counts
                        .iter()
                        .map(|(s, _)| *s)
                        .max()
                        .unwrap_or(NodeState::Missing),
                    detail,
                }
            }
        })
        .collect();
    Ok(crate::graph::svg(&drawn, &info, url_encode))
}

const GRAPH_EVENTS: &str = "sse:materialized, sse:run_started, sse:run_finished, \
                            sse:step_failed, sse:run_interrupted, sse:run_resumed";

#[derive(Debug, Deserialize)]
struct GraphQuery {
    /// Open groups, comma-separated, or `all`.
    expand: Option<String>,
}

fn graph_href(grouping: &Grouping) -> String {
    let query = grouping.query();
    if query.is_empty() {
        "/".to_owned()
    } else {
        format!("/?expand={}", url_encode(&query))
    }
}

async fn graph_page(
    State(state): State<AppState>,
    query: Result<Query<GraphQuery>, QueryRejection>,
) -> PageResult<Html<String>> {
    let Query(query) = query.map_err(ApiError::from)?;
    let grouping = graph_grouping(&state, query.expand.as_deref());
    let svg = graph_svg(&state, &grouping).await?;
    let defs = state.engine().definitions();
    let nodes = state.inner.layouts.get(defs, &grouping).view.nodes.len();
    let expand = url_encode(&grouping.query());
    Ok(layout(
        "Assets",
        html! {
            h1 { "Asset graph" }
            p.legend {
                @for s in NodeState::ALL {
                    span class=(format!("chip state-{}", s.name())) {
                        (s.marker()) " " (s.name())
                    }
                }
            }
            @if grouping.collapse {
                p.grouping #grouping {
                    (defs.len()) " assets drawn as " (nodes) " nodes: groups are collapsed. "
                    @for open in &grouping.expanded {
                        a.pill href=(graph_href(&grouping.without(open)))
                            title="Collapse this group" { "▾ " (open) " ✕" }
                    }
                    @if !grouping.expanded.is_empty() {
                        a href=(graph_href(&Grouping { expanded: Default::default(), ..grouping.clone() }))
                            { "Collapse all" }
                        " · "
                    }
                    a href="/?expand=all" { "Expand all" }
                }
            } @else if defs.len() > crate::graph::COLLAPSE_ABOVE {
                p.grouping #grouping { "Every group is open. " a href="/" { "Collapse groups" } }
            }
            div.graph-tools role="toolbar" aria-label="graph view" {
                button #zoom-in type="button" title="Zoom in (+)" { "+" }
                button #zoom-out type="button" title="Zoom out (−)" { "−" }
                button #zoom-fit type="button" title="Fit the graph (0)" { "Fit" }
                button #clear-selection type="button" title="Clear the selection (Esc)" { "Clear" }
                span.hint { "Wheel or + / − to zoom, drag or arrow keys to pan; \
                             click a node to highlight what it reads and what reads it." }
            }
            div.graph-main hx-ext="sse" sse-connect="/api/v1/events" {
                div #graph.graph-box tabindex="0" data-expand=(grouping.query())
                    hx-get=(format!("/ui/graph?expand={expand}")) hx-trigger=(GRAPH_EVENTS)
                    hx-swap="innerHTML" {
                    (PreEscaped(svg))
                }
                aside #node-detail.panel aria-live="polite" {
                    p.hint { "Click an asset or a group to see it here. \
                              The graph updates as runs record materializations." }
                }
            }
            script src="/static/graph.js" {}
        },
    ))
}

async fn graph_fragment(
    State(state): State<AppState>,
    query: Result<Query<GraphQuery>, QueryRejection>,
) -> PageResult<Html<String>> {
    let Query(query) = query.map_err(ApiError::from)?;
    let grouping = graph_grouping(&state, query.expand.as_deref());
    Ok(Html(graph_svg(&state, &grouping).await?))
}

#[derive(Debug, Deserialize)]
struct NodeQuery {
    /// A node's `data-id`: `a:KEY` for an asset, `g:PATH` for a group.
    id: String,
    expand: Option<String>,
}

/// The detail panel of a node the graph page selected.
async fn graph_node(
    State(state): State<AppState>,
    query: Result<Query<NodeQuery>, QueryRejection>,
) -> PageResult<Html<String>> {
    let Query(query) = query.map_err(ApiError::from)?;
    let defs = state.engine().definitions();
    let (snapshot, states) = asset_states(&state).await?;
    let chips = |counts: &flowstone_core::query::StatusCounts| {
        html! {
            span.chip.state-fresh { "✓ " (counts.materialized) }
            span.chip.state-stale { "↻ " (counts.stale) }
            span.chip.state-failed { "✕ " (counts.failed) }
            span.chip.state-missing { "○ " (counts.missing) }
            span.total { "of " (counts.total) " partitions" }
        }
    };
    if let Some(key) = query.id.strip_prefix("a:") {
        let def = defs.lookup(key).map_err(ApiError::UnknownAsset)?;
        let view = snapshot.assets.get(&def.key);
        let s = states.get(&def.key).copied().unwrap_or(NodeState::Missing);
        let latest = view.and_then(|v| v.latest()).map(|(_, _, at)| at);
        let href = href_asset(&def.key);
        let pills = |list: Vec<&std::sync::Arc<flowstone_core::asset::AssetDef>>| {
            html! {
                @for a in &list {
                    a.pill href=(href_asset(&a.key)) data-select=(format!("a:{}", a.key)) { (a.key.as_str()) }
                }
                @if list.is_empty() { "none" }
            }
        };
        return Ok(Html(
            html! {
                h2 data-node=(query.id) { a href=(href) { (def.key.as_str()) } }
                p { span class=(format!("chip state-{}", s.name())) { (s.marker()) " " (s.name()) } }
                @if let Some(d) = &def.description { p.description { (d) } }
                @if let Some(v) = view { p.counts { (chips(&v.counts)) } }
                dl.facts.narrow {
                    dt { "Partitions" }
                    dd { (def.partitions.as_ref().map_or("none".to_owned(), |p| p.describe())) }
                    @if let Some(g) = &def.group { dt { "Group" } dd { (g) } }
                    dt { "Last materialized" } dd { (latest.map_or("never".to_owned(), when)) }
                    dt { "Reads" } dd { (pills(defs.upstream_of(&def.key))) }
                    dt { "Read by" } dd { (pills(defs.downstream_of(&def.key))) }
                }
                p { a.button href=(href) { "Open the asset" } }
            }
            .into_string(),
        ));
    }
    let Some(path) = query.id.strip_prefix("g:") else {
        return Err(ApiError::BadRequest(format!(
            "node id {:?} is neither a:ASSET nor g:GROUP",
            query.id
        ))
        .into());
    };
    let grouping = graph_grouping(&state, query.expand.as_deref());
    let drawn = state.inner.layouts.get(defs, &grouping);
    let Some(members) = drawn.view.nodes.iter().find_map(|n| match n {
        ViewNode::Group { path: p, members } if p == path => Some(members),
        _ => None,
    }) else {
        return Err(ApiError::NotFound(format!(
            "no collapsed group {path} in this graph; the graph page lists them"
        ))
        .into());
    };
    let mut total = flowstone_core::query::StatusCounts::default();
    for key in members {
        if let Some(v) = snapshot.assets.get(key) {
            let c = v.counts;
            total.total += c.total;
            total.materialized += c.materialized;
            total.stale += c.stale;
            total.failed += c.failed;
            total.missing += c.missing;
        }
    }
    const LISTED: usize = 200;
    Ok(Html(
        html! {
            h2 data-node=(query.id) { "▸ " (path) }
            p { (members.len()) " assets: "
                @for (s, c) in count_states(members.iter(), &states) {
                    span class=(format!("chip state-{}", s.name())) { (s.marker()) " " (c) " " (s.name()) }
                }
            }
            p.counts { (chips(&total)) }
            p { a.button href=(graph_href(&grouping.with(path))) { "Expand the group" } }
            ul.members {
                @for key in members.iter().take(LISTED) {
                    @let s = states.get(key).copied().unwrap_or(NodeState::Missing);
                    li { span class=(format!("state-{}", s.name())) { (s.marker()) } " "
                         a href=(href_asset(key)) { (key.as_str()) } }
                }
            }
            @if members.len() > LISTED { p.hint { "and " (members.len() - LISTED) " more." } }
        }
        .into_string(),
    ))
}

// -- an asset ----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct AssetQuery {
    partition: Option<String>,
    /// Set by a launch from this page that found nothing to do.
    nothing: Option<String>,
    /// The metadata key the chart shows.
    metric: Option<String>,
}

fn asset_key(key: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    Ok(key?.0)
}

/// The definition of the asset a page names.
fn asset_def(state: &AppState, key: &str) -> ApiResult<std::sync::Arc<flowstone_core::AssetDef>> {
    let defs = state.engine().definitions();
    Ok(defs.lookup(key).map_err(ApiError::UnknownAsset)?.clone())
}

async fn asset_page(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<AssetQuery>, QueryRejection>,
) -> PageResult<Html<String>> {
    let key = asset_key(key)?;
    let Query(query) = query.map_err(ApiError::from)?;
    let def = asset_def(&state, &key)?;
    // A read token cannot launch: show no forms that would be refused.
    let read_only = crate::auth::signed_in().is_some_and(|who| who.right < Right::Launch);
    let defs = state.engine().definitions();
    let href = href_asset(&def.key);
    let example = def
        .partitions
        .as_ref()
        .map(|p| p.example_key(Timestamp::now()));
    let last = def.partitions.as_ref().and_then(|p| {
        let now = Timestamp::now();
        let n = p.len(now);
        (n > 0).then(|| p.key_at(n - 1, now)).flatten()
    });
    let selected = match &query.partition {
        Some(p) => Some(materialization_panel(&state, &def.key, Some(p)).await),
        None if def.partitions.is_none() => {
            Some(materialization_panel(&state, &def.key, None).await)
        }
        None => None,
    };
    let fragment = partitions_fragment(&state, &def.key).await?;
    let chart = match def.partitions {
        Some(_) => Some(chart_fragment(&state, &def, query.metric.as_deref()).await?),
        None => None,
    };
    Ok(layout(
        def.key.as_str(),
        html! {
            p.crumbs { a href="/" { "Assets" } " / " (def.key.as_str()) }
            h1 { (def.key.as_str()) }
            @if let Some(d) = &def.description { p.description { (d) } }
            dl.facts {
                dt { "Partitions" }
                dd { (def.partitions.as_ref().map_or("none".to_owned(), |p| p.describe())) }
                dt { "Code version" } dd { code { (def.code_version) } }
                dt { "Upstream" }
                dd {
                    @for up in defs.upstream_of(&def.key) {
                        a.pill href=(href_asset(&up.key)) { (up.key.as_str()) }
                    }
                    @if defs.upstream_of(&def.key).is_empty() { "none" }
                }
                dt { "Downstream" }
                dd {
                    @for down in defs.downstream_of(&def.key) {
                        a.pill href=(href_asset(&down.key)) { (down.key.as_str()) }
                    }
                    @if defs.downstream_of(&def.key).is_empty() { "none" }
                }
            }
            @if read_only {
                p.hint { "Your token has the read right: launching runs needs a token with the \
                          launch right." }
            } @else {
            section.actions {
                form.inline method="post" action=(format!("/ui{href}/materialize")) {
                    @if def.partitions.is_some() {
                        label { "Partition "
                            input name="partition" required
                                placeholder=(example.clone().unwrap_or_default())
                                value=(query.partition.clone().unwrap_or_default());
                        }
                    }
                    button #materialize type="submit" { "Materialize" }
                }
                @if def.partitions.is_some() {
                    form.inline method="post" action=(format!("/ui{href}/backfill")) {
                        label { "From " input name="from"
                            value=(example.clone().unwrap_or_default()); }
                        label { "to " input name="to"
                            value=(last.as_ref().map_or("", |k| k.as_str())); }
                        label.check { input type="checkbox" name="stale" value="true"; " stale too" }
                        button type="submit" { "Backfill missing" }
                    }
                }
            }
            }
            @if query.nothing.is_some() {
                p.notice role="status" { "Nothing to do: every selected partition is already \
                                          materialized, or queued or running in another run \
                                          (see Runs)." }
            }
            @if let Some(panel) = selected { (panel) }
            div hx-ext="sse" sse-connect="/api/v1/events" {
                div #partitions hx-get=(format!("/ui{href}/partitions"))
                    hx-trigger="sse:materialized, sse:step_failed"
                    hx-swap="innerHTML" {
                    (fragment)
                }
                @if let Some(chart) = chart { (chart) }
            }
        },
    ))
}

async fn asset_fragment(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> PageResult<Html<String>> {
    let key = asset_key(key)?;
    let def = asset_def(&state, &key)?;
    Ok(Html(
        partitions_fragment(&state, &def.key).await?.into_string(),
    ))
}

#[derive(Debug, Deserialize)]
struct ChartQuery {
    metric: Option<String>,
}

async fn chart_route(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<ChartQuery>, QueryRejection>,
) -> PageResult<Html<String>> {
    let key = asset_key(key)?;
    let Query(query) = query.map_err(ApiError::from)?;
    let def = asset_def(&state, &key)?;
    Ok(Html(
        chart_fragment(&state, &def, query.metric.as_deref())
            .await?
            .into_string(),
    ))
}

/// A chart of one numeric metadata value over the asset's partitions, with
/// a selector when its materializations record several; redrawn when a
/// materialization is recorded.
async fn chart_fragment(
    state: &AppState,
    def: &flowstone_core::AssetDef,
    metric: Option<&str>,
) -> ApiResult<Markup> {
    let records = state.engine().store().partitions(&def.key).await?;
    let keys = crate::chart::numeric_keys(&records);
    let href = href_asset(&def.key);
    let metric = match metric {
        Some(m) if keys.iter().any(|k| k == m) => Some(m.to_owned()),
        Some(m) if !m.is_empty() => {
            return Err(ApiError::BadRequest(format!(
                "no numeric metadata {m:?} on {}; it has {}",
                def.key,
                if keys.is_empty() {
                    "none".to_owned()
                } else {
                    keys.join(", ")
                }
            )));
        }
        _ => keys.first().cloned(),
    };
    let Some(metric) = metric else {
        return Ok(html! {
            section #chart.panel hx-get=(format!("/ui{href}/chart")) hx-trigger="sse:materialized"
                hx-swap="outerHTML" {
                h2 { "Metadata" }
                p.hint { "No numeric metadata recorded yet: an asset records some with \
                          ctx.add_metadata(\"rows\", n)." }
            }
        });
    };
    let now = Timestamp::now();
    let points = crate::chart::points(&records, &metric, |k| {
        let p = def.partitions.as_ref()?;
        p.index_of(k?, now).ok()
    });
    let svg = crate::chart::svg(&points, &metric, |p| {
        format!(
            "{href}?partition={}&metric={}",
            url_encode(p),
            url_encode(&metric)
        )
    });
    let values = points.iter().map(|p| p.value);
    let (min, max) = values
        .clone()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let mean = values.sum::<f64>() / points.len().max(1) as f64;
    let number = crate::chart::short_number;
    Ok(html! {
        section #chart.panel hx-get=(format!("/ui{href}/chart?metric={}", url_encode(&metric)))
            hx-trigger="sse:materialized" hx-swap="outerHTML" {
            div.chart-head {
                h2 { (metric) " by partition" }
                @if keys.len() > 1 {
                    label { "Chart of "
                        select name="metric" hx-get=(format!("/ui{href}/chart"))
                            hx-target="#chart" hx-swap="outerHTML" hx-trigger="change" {
                            @for k in &keys {
                                option value=(k) selected[*k == metric] { (k) }
                            }
                        }
                    }
                }
            }
            p.hint {
                (points.len()) " partitions · min " (number(min)) " · mean " (number(mean))
                " · max " (number(max))
                @if points.len() == crate::chart::MAX_POINTS { " (the newest only)" }
                @if points.len() <= crate::chart::BARS_UP_TO { " · click a bar for its materialization" }
            }
            (PreEscaped(svg))
        }
    })
}

/// The most cells a heatmap draws; older partitions are left out.
const MAX_CELLS: u64 = 9000;

/// Counts and the heatmap: a calendar (a row per month) for daily
/// partitions, a row per day for hourly ones, rows of cells otherwise.
async fn partitions_fragment(state: &AppState, key: &AssetKey) -> ApiResult<Markup> {
    let snapshot = state.inner.status.snapshot(state.engine()).await?;
    let def = state
        .engine()
        .definitions()
        .asset(key)
        .expect("a defined asset")
        .clone();
    let view = snapshot
        .assets
        .get(key)
        .ok_or_else(|| ApiError::Internal(format!("no status for {key}")))?;
    let c = view.counts;
    let href = href_asset(key);
    let counts = html! {
        p.counts #counts data-materialized=(c.materialized) data-stale=(c.stale)
            data-failed=(c.failed) data-missing=(c.missing) data-total=(c.total) {
            span.chip.state-fresh { "✓ materialized " (c.materialized) }
            span.chip.state-stale { "↻ stale " (c.stale) }
            span.chip.state-failed { "✕ failed " (c.failed) }
            span.chip.state-missing { "○ missing " (c.missing) }
            span.total { "of " (c.total) }
        }
    };
    let Some(p) = &def.partitions else {
        return Ok(counts);
    };
    let now = Timestamp::now();
    let total = p.len(now);
    let start = total.saturating_sub(MAX_CELLS);
    let rows = view.page(p, start, total - start, now);
    let kind = p.kind_name();
    let mut grouped: BTreeMap<String, Vec<&crate::status::PartitionRow>> = BTreeMap::new();
    for row in &rows {
        let label = match kind {
            "daily" => row.partition.get(..7).unwrap_or("").to_owned(),
            "hourly" => row.partition.get(..10).unwrap_or("").to_owned(),
            _ => format!("{:06}", row.index / 53),
        };
        grouped.entry(label).or_default().push(row);
    }
    Ok(html! {
        (counts)
        @if start > 0 {
            p.hint { "Showing the last " (MAX_CELLS) " of " (total) " partitions." }
        }
        div class=(format!("heatmap heatmap-{kind}")) role="grid" aria-label="partitions" {
            @for (label, cells) in &grouped {
                div.hrow role="row" {
                    span.hlabel { @if kind == "daily" || kind == "hourly" { (label) } }
                    @if kind == "daily" {
                        @let first_day: usize = cells.first()
                            .and_then(|r| r.partition.get(8..10))
                            .and_then(|d| d.parse().ok())
                            .unwrap_or(1);
                        @for _ in 1..first_day { span.cell.blank {} }
                    }
                    @for row in cells {
                        a class=(format!("cell s-{}", row.state))
                          href=(format!("{href}?partition={}", url_encode(&row.partition)))
                          title=(format!("{}: {}{}", row.partition, row.state,
                                         row.reason.as_ref().map_or(String::new(), |r| format!(" ({r})"))))
                          data-partition=(row.partition) data-state=(row.state) {
                            (cell_marker(row.state))
                        }
                    }
                }
            }
        }
    })
}

fn cell_marker(state: &str) -> &'static str {
    match state {
        "failed" => "✕",
        "stale" => "↻",
        _ => "",
    }
}

pub(crate) fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One partition's latest materialization: metadata and direct lineage.
async fn materialization_panel(
    state: &AppState,
    key: &AssetKey,
    partition: Option<&str>,
) -> Markup {
    let engine = state.engine();
    let found = async {
        let target = engine.target(key.as_str(), partition)?;
        let latest = engine
            .store()
            .latest_materializations(std::slice::from_ref(&target))
            .await?;
        let Some(m) = latest.into_iter().next() else {
            return Ok::<_, ApiError>((target, None, Vec::new(), Vec::new()));
        };
        let inputs = engine.store().inputs_of(&[m.id]).await?;
        let consumers = engine.store().consumers_of(&[m.id]).await?;
        Ok((target, Some(m), inputs, consumers))
    }
    .await;
    match found {
        Err(err) => html! { div.error role="alert" { (err.public_message()) } },
        Ok((target, None, _, _)) => html! {
            section.panel { h2 { (target.to_string()) } p { "Never materialized." } }
        },
        Ok((target, Some(m), inputs, consumers)) => html! {
            section.panel #materialization {
                h2 { (target.to_string()) }
                dl.facts {
                    dt { "Materialization" } dd { "#" (m.id) }
                    dt { "Run" } dd { a href=(format!("/runs/{}", m.run_id)) { (short(m.run_id)) } }
                    dt { "Finished" } dd { (when(m.finished_at)) }
                    dt { "By" } dd { (m.user) " (" (m.trigger) ")" }
                    dt { "Code / data version" } dd { code { (m.code_version) } " / " code { (m.data_version) } }
                    @for (k, v) in &m.metadata { dt { (k) } dd { code { (v.to_string()) } } }
                }
                div.lineage {
                    div { h3 { "Read" }
                        ul { @for (_, i) in &inputs {
                            li { a href=(format!("{}?partition={}", href_asset(&i.target.asset),
                                    url_encode(i.target.partition.as_ref().map_or("", |p| p.as_str()))))
                                 { (i.target.to_string()) } " #" (i.id) }
                        } @if inputs.is_empty() { li { "nothing" } } }
                    }
                    div { h3 { "Read by" }
                        ul { @for (_, c) in &consumers {
                            li { a href=(format!("{}?partition={}", href_asset(&c.target.asset),
                                    url_encode(c.target.partition.as_ref().map_or("", |p| p.as_str()))))
                                 { (c.target.to_string()) } " #" (c.id) }
                        } @if consumers.is_empty() { li { "nothing yet" } } }
                    }
                }
            }
        },
    }
}

#[derive(Debug, Deserialize)]
struct MaterializeForm {
    partition: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BackfillForm {
    from: Option<String>,
    to: Option<String>,
    stale: Option<String>,
}

/// After a launch from a page: to the run's page (htmx or plain form).
fn to_run(headers: &HeaderMap, run: Option<&str>, back: &str) -> Response {
    let target = run.map_or_else(|| format!("{back}?nothing=1"), |id| format!("/runs/{id}"));
    if headers.contains_key("hx-request") {
        let mut response = StatusCode::NO_CONTENT.into_response();
        if let Ok(value) = HeaderValue::from_str(&target) {
            response.headers_mut().insert("hx-redirect", value);
        }
        return response;
    }
    Redirect::to(&target).into_response()
}

async fn materialize(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
    form: Result<Form<MaterializeForm>, FormRejection>,
) -> PageResult<Response> {
    let key = asset_key(key)?;
    let Form(form) = form.map_err(ApiError::from)?;
    let partitions = form
        .partition
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .into_iter()
        .collect();
    let request = LaunchRequest {
        assets: vec![key.clone()],
        partitions,
        ..LaunchRequest::default()
    };
    let principal = principal.map(|Extension(p)| p);
    let (_, body) = crate::api::launch_run(&state, principal.as_ref(), request).await?;
    Ok(to_run(
        &headers,
        body["run_id"].as_str(),
        &format!("/assets/{key}"),
    ))
}

async fn backfill(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
    form: Result<Form<BackfillForm>, FormRejection>,
) -> PageResult<Response> {
    let key = asset_key(key)?;
    let Form(form) = form.map_err(ApiError::from)?;
    let text = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let (from, to) = (text(form.from), text(form.to));
    let all = from.is_none() && to.is_none();
    let request = LaunchRequest {
        assets: vec![key.clone()],
        mode: Some("backfill".to_owned()),
        from,
        to,
        all,
        stale: form.stale.is_some(),
        ..LaunchRequest::default()
    };
    let principal = principal.map(|Extension(p)| p);
    let (_, body) = crate::api::launch_run(&state, principal.as_ref(), request).await?;
    Ok(to_run(
        &headers,
        body["run_id"].as_str(),
        &format!("/assets/{key}"),
    ))
}

// -- runs ----------------------------------------------------------------------------

fn run_state_chip(state: &str) -> Markup {
    let (class, marker) = match state {
        "succeeded" | "completed" => ("state-fresh", "✓"),
        "failed" => ("state-failed", "✕"),
        "running" => ("state-running", "▶"),
        "cancelled" | "skipped" => ("state-missing", "–"),
        _ => ("state-stale", "⏸"),
    };
    html! { span class=(format!("chip {class}")) data-state=(state) { (marker) " " (state) } }
}

fn runs_table(runs: &[RunRecord]) -> Markup {
    html! {
        table.runs {
            thead { tr { th { "Run" } th { "State" } th { "What" } th { "Progress" } th { "By" } th { "Created" } } }
            tbody {
                @for run in runs {
                    @let s = run.steps;
                    @let not_done = s.failed + s.skipped + s.cancelled;
                    tr {
                        td { a href=(format!("/runs/{}", run.id)) { code { (short(run.id)) } } }
                        td { (run_state_chip(run.state.as_str())) }
                        td.what { (run.description) }
                        td {
                            progress max=(s.total().max(1)) value=(s.completed) {}
                            " " (s.completed) " / " (s.total())
                            @if not_done > 0 {
                                " (" (not_done) " failed, skipped or cancelled)"
                            }
                        }
                        td { (run.user) }
                        td { (when(run.created_at)) }
                    }
                }
            }
        }
    }
}

async fn runs_page(State(state): State<AppState>) -> PageResult<Html<String>> {
    let runs = state.engine().store().runs(100).await?;
    Ok(layout(
        "Runs",
        html! {
            h1 { "Runs" }
            div hx-ext="sse" sse-connect="/api/v1/events" {
                div #runs hx-get="/ui/runs"
                    hx-trigger="sse:run_started, sse:run_finished, sse:materialized, sse:run_interrupted"
                    hx-swap="innerHTML" {
                    (runs_table(&runs))
                }
            }
        },
    ))
}

async fn runs_fragment(State(state): State<AppState>) -> PageResult<Html<String>> {
    let runs = state.engine().store().runs(100).await?;
    Ok(Html(runs_table(&runs).into_string()))
}

fn run_id(id: Result<Path<String>, PathRejection>) -> ApiResult<RunId> {
    let text = id?.0;
    text.parse()
        .map_err(|err: flowstone_core::ids::RunIdError| ApiError::BadRequest(err.to_string()))
}

async fn run_parts(
    state: &AppState,
    id: RunId,
) -> ApiResult<(RunRecord, Vec<StepRecord>, Vec<EventRecord>)> {
    let store = state.engine().store();
    let run = store.run(id).await?.ok_or_else(|| {
        ApiError::UnknownRun(format!("no run with id {id}; the runs page lists them"))
    })?;
    let steps = store.steps(id).await?;
    // The newest events: page to the end, keep the last 200.
    let mut events: Vec<EventRecord> = Vec::new();
    let mut after = None;
    loop {
        let page = store.events(id, after, 5000).await?;
        let full = page.len() == 5000;
        after = page.last().map(|e| e.id).or(after);
        events.extend(page);
        if events.len() > 200 {
            events.drain(..events.len() - 200);
        }
        if !full {
            break;
        }
    }
    Ok((run, steps, events))
}

fn run_body(run: &RunRecord, steps: &[StepRecord], events: &[EventRecord]) -> Markup {
    let s = run.steps;
    let done = s.completed + s.failed + s.skipped + s.cancelled;
    let queued = s.pending + s.available + s.retryable;
    let elapsed = run
        .finished_at
        .unwrap_or_else(Timestamp::now)
        .duration_since(run.created_at)
        .as_secs_f64()
        .max(0.001);
    let rate = s.completed as f64 / elapsed;
    let left = s.live();
    let eta = if rate > 0.0 && left > 0 {
        format!("about {:.0} s left", left as f64 / rate)
    } else {
        "–".to_owned()
    };
    html! {
        div.summary #run-summary data-state=(run.state.as_str()) {
            (run_state_chip(run.state.as_str()))
            span { "finished " strong { (done) } " / " (s.total()) }
            span { "✓ " (s.completed) " completed" }
            span { "✕ " (s.failed) " failed" }
            span { "▶ " (s.running) " running" }
            span { "… " (queued) " queued" }
            @if s.skipped > 0 { span { "↷ " (s.skipped) " skipped" } }
            @if s.cancelled > 0 { span { "⊘ " (s.cancelled) " cancelled" } }
            span { (format!("{rate:.1}")) " steps/s · " (eta) }
        }
        progress.big max=(s.total().max(1)) value=(s.completed) {}
        h2 { "Steps" }
        div.steps role="list" {
            @for step in steps.iter().take(5000) {
                @let st = step.state.as_str();
                span class=(format!("step s-{}", step_class(step.state))) role="listitem"
                    title=(format!("{}: {st}{}", step.target, step.error.as_ref().map_or(String::new(), |e| format!(" ({e})"))))
                    data-target=(step.target.to_string()) data-state=(st) {
                    (step_marker(step.state))
                }
            }
        }
        h2 { "Events" }
        table.events {
            tbody {
                @for e in events.iter().rev() {
                    tr class=(format!("level-{}", e.level.as_str())) {
                        td.t { (e.at.strftime("%H:%M:%S%.3f").to_string()) }
                        td { code { (e.kind.as_str()) } }
                        td { (e.message) }
                    }
                }
            }
        }
    }
}

fn step_class(state: StepState) -> &'static str {
    match state {
        StepState::Completed => "materialized",
        StepState::Failed => "failed",
        StepState::Running => "running",
        StepState::Skipped | StepState::Cancelled => "missing",
        StepState::Pending | StepState::Available | StepState::Retryable => "queued",
    }
}

fn step_marker(state: StepState) -> &'static str {
    match state {
        StepState::Completed => "✓",
        StepState::Failed => "✕",
        StepState::Running => "▶",
        StepState::Retryable => "↻",
        _ => "",
    }
}

async fn run_page(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> PageResult<Html<String>> {
    let id = run_id(id)?;
    let (run, steps, events) = run_parts(&state, id).await?;
    let live = !run.state.is_terminal();
    Ok(layout(
        &format!("Run {}", short(id)),
        html! {
            p.crumbs { a href="/runs" { "Runs" } " / " code { (id) } }
            h1 { "Run " code { (short(id)) } }
            p.description { (run.description) " · by " (run.user) " (" (run.trigger) ") · " (when(run.created_at)) }
            @if live {
                form.inline method="post" action=(format!("/ui/runs/{id}/cancel")) {
                    button.danger type="submit" { "Cancel run" }
                }
            }
            div hx-ext="sse" sse-connect=(format!("/api/v1/events?run={id}")) {
                div #run hx-get=(format!("/ui/runs/{id}"))
                    hx-trigger="sse:materialized, sse:step_failed, sse:run_finished, sse:step_skipped, sse:run_interrupted, sse:run_resumed, sse:log"
                    hx-swap="innerHTML" {
                    (run_body(&run, &steps, &events))
                }
            }
        },
    ))
}

async fn run_fragment(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> PageResult<Html<String>> {
    let id = run_id(id)?;
    let (run, steps, events) = run_parts(&state, id).await?;
    Ok(Html(run_body(&run, &steps, &events).into_string()))
}

async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> PageResult<Response> {
    let id = run_id(id)?;
    state.engine().cancel(id).await?;
    state.inner.feed.wake();
    let id = id.to_string();
    Ok(to_run(&headers, Some(&id), "/runs"))
}

// -- signing in ------------------------------------------------------------------------

/// Where signing in may send the user afterwards: a path on this server,
/// never another site. Accepted: one leading `/` (not `//`, which a
/// browser reads as another host), no backslash (read as `/` by some), and
/// printable ASCII only (a tab or a newline is dropped by browsers, so
/// `/\t/evil.example` would become `//evil.example`). A leading `/` also
/// rules out a scheme (`https:`, `javascript:`).
pub(crate) fn local_path(next: &str) -> Option<&str> {
    let mut chars = next.chars();
    let local = chars.next() == Some('/')
        && chars.next() != Some('/')
        && next.len() <= 2048
        && next.chars().all(|c| c.is_ascii_graphic() && c != '\\');
    local.then_some(next)
}

/// The sign-in page, asked to come back to `uri` once signed in.
pub(crate) fn login_href(uri: &axum::http::Uri) -> String {
    let back = uri.path_and_query().map_or("/", |pq| pq.as_str());
    match local_path(back) {
        Some(back) if back != "/" => format!("/login?next={}", url_encode(back)),
        _ => "/login".to_owned(),
    }
}

fn login_form(message: Option<&str>, next: Option<&str>) -> Html<String> {
    let next = next.and_then(local_path);
    layout(
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(m) = message { div.error role="alert" { (m) } }
            form.login method="post" action="/login" {
                label { "API token " input type="password" name="token" required autocomplete="current-password"; }
                @if let Some(next) = next { input type="hidden" name="next" value=(next); }
                button type="submit" { "Sign in" }
            }
            p.hint { "Make a token where the store is with "
                     code { "tokens create NAME --right read" } " (or "
                     code { "--right launch" } " to launch runs too); "
                     code { "tokens list" } " shows them." }
        },
    )
}

/// The query of the sign-in page: where to go back to.
#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(query: Result<Query<LoginQuery>, QueryRejection>) -> Html<String> {
    let next = query.ok().and_then(|Query(q)| q.next);
    login_form(None, next.as_deref())
}

/// Forgets the session cookie (a bearer header is the client's to drop).
async fn logout() -> Response {
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        crate::auth::COOKIE
    );
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    /// The page that sent the user to sign in; see [`local_path`].
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        let form = login_form(Some("Give a token."), None);
        return (StatusCode::BAD_REQUEST, form).into_response();
    };
    let token = form.token.trim();
    match state.inner.auth.check(Some(token)).await {
        Ok(Verdict::Valid(_)) => {}
        Ok(Verdict::Open | Verdict::Refused(_)) => {
            return (
                StatusCode::UNAUTHORIZED,
                login_form(Some("That token is not valid here."), form.next.as_deref()),
            )
                .into_response();
        }
        Err(err) => return ApiError::from(err).into_response(),
    }
    let cookie = format!(
        "{}={token}; HttpOnly; SameSite=Strict; Path=/",
        crate::auth::COOKIE
    );
    // Back to the page that asked, if it is one of ours; else the graph.
    let back = form.next.as_deref().and_then(local_path).unwrap_or("/");
    let mut response = Redirect::to(back).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_gone_back_to() {
        for local in ["/", "/runs/5", "/assets/a%2Fb?partition=2024-01-01", "/x:y"] {
            assert_eq!(local_path(local), Some(local), "{local:?}");
        }
        for foreign in [
            "",
            "runs/5",
            "//evil.example",
            "//evil.example/runs",
            "https://evil.example",
            "javascript:alert(1)",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /evil.example",
            "/ünïcode",
        ] {
            assert_eq!(local_path(foreign), None, "{foreign:?}");
        }
        assert_eq!(local_path(&format!("/{}", "a".repeat(3000))), None);
    }

    #[test]
    fn the_sign_in_page_is_asked_to_come_back() {
        let uri: axum::http::Uri = "/assets/a%2Fb?partition=x".parse().unwrap();
        assert_eq!(
            login_href(&uri),
            "/login?next=%2Fassets%2Fa%252Fb%3Fpartition%3Dx"
        );
        assert_eq!(login_href(&"/".parse().unwrap()), "/login");
    }
}
