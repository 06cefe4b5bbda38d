//! FlowStone's HTTP server: a versioned JSON API under `/api/v1`, a live event
//! stream (`text/event-stream`), and the dashboard's server-rendered pages.
//!
//! Shape: [`ServeOptions`] (checked once) -> [`Server::start`] (binds, starts
//! the event feed, the in-process worker and the run keeper) -> a cheap
//! [`Server`] handle, stopped by [`Server::shutdown`], which drains runs
//! started here and stops every task it spawned.
//!
//! Guarantees:
//! - errors are JSON with a stable code, mapped in one place ([`ApiError`]);
//!   the dashboard's paths show the same error as a page; a panic in a
//!   handler is a JSON 500, never a dropped connection;
//! - without a configured token the server binds only to loopback addresses;
//! - an open event stream whose token is revoked or expires ends within
//!   [`ServeOptions::recheck_streams_every`];
//! - the event stream delivers events in id order, without gaps or repeats,
//!   from the id a client gives (or `Last-Event-ID` on reconnect).

mod api;
pub mod auth;
mod chart;
mod error;
mod feed;
mod graph;
mod memory;
pub mod openapi;
mod pages;
mod runs;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use flowstone_core::{Engine, EngineError, Stop};
use tokio::sync::watch;

pub use api::{LaunchRequest, api_routes};
pub use auth::{Principal, RECHECK_STREAMS_EVERY, Right, TokenSpecError, Tokens};
pub use error::ApiError;
pub use feed::EventFeed;

/// The largest request body accepted, in bytes (1 MiB): a launch request is
/// a few hundred bytes.
pub const MAX_BODY: usize = 1 << 20;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub bind: SocketAddr,
    pub tokens: Tokens,
    /// Run an in-process worker loop over every run's steps.
    pub worker: bool,
    /// Steps the in-process worker runs at once.
    pub worker_parallel: usize,
    /// How often the event feed reads the store when nothing wakes it.
    pub feed_every: Duration,
    /// How often an open event stream's token is checked again.
    pub recheck_streams_every: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 3000)),
            tokens: Tokens::none(),
            worker: true,
            worker_parallel: flowstone_core::default_parallelism(),
            feed_every: Duration::from_millis(100),
            recheck_streams_every: RECHECK_STREAMS_EVERY,
        }
    }
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve on {0} without an API token: anyone who can reach that address \
         could launch runs; bind to 127.0.0.1 (the default), or create a token first with \
         `tokens create NAME --right launch` (or set FLOWSTONE_API_TOKENS)"
    )]
    OpenWithoutToken(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the server stopped: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot read the API tokens: {0}")]
    Store(#[from] flowstone_core::StoreError),
}

impl ServeOptions {
    /// Checks the options against the store before anything starts.
    ///
    /// # Errors
    ///
    /// [`ServeError::OpenWithoutToken`] for an address other than loopback
    /// with no token configured and none in the store; [`ServeError::Store`]
    /// when the store cannot say.
    pub async fn check(&self, store: &dyn flowstone_core::Store) -> Result<(), ServeError> {
        if self.bind.ip().is_loopback() || !self.tokens.is_empty() {
            return Ok(());
        }
        if store.has_active_tokens(jiff::Timestamp::now()).await? {
            return Ok(());
        }
        Err(ServeError::OpenWithoutToken(self.bind))
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    auth: auth::Auth,
    feed: EventFeed,
    status: status::StatusCache,
    layouts: graph::LayoutCache,
    runs: runs::Runs,
    memory: Arc<memory::Trimmer>,
    /// How often an open event stream's token is checked again, in
    /// milliseconds (an atomic so that it can be set on a built state).
    recheck_streams_ms: AtomicU64,
}

impl AppState {
    /// State for a router on a loopback address (open to every request
    /// while no token exists); the feed must already be started.
    pub fn new(engine: Engine, tokens: Tokens, feed: EventFeed) -> Self {
        Self::bound(engine, tokens, feed, true)
    }

    /// State for a router; on an address other than loopback every request
    /// needs a token, even when none exists.
    fn bound(engine: Engine, tokens: Tokens, feed: EventFeed, loopback: bool) -> Self {
        AppState {
            inner: Arc::new(Inner {
                runs: runs::Runs::new(feed.clone()),
                memory: memory::Trimmer::new(engine.store().clone()),
                auth: auth::Auth::new(tokens, engine.store().clone(), loopback),
                engine,
                feed,
                status: status::StatusCache::default(),
                layouts: graph::LayoutCache::default(),
                recheck_streams_ms: AtomicU64::new(millis(RECHECK_STREAMS_EVERY)),
            }),
        }
    }

    /// Checks the token of each open event stream again every `every`
    /// instead of every [`RECHECK_STREAMS_EVERY`]; streams opened before
    /// keep their pace.
    #[must_use]
    pub fn recheck_streams_every(self, every: Duration) -> Self {
        self.inner
            .recheck_streams_ms
            .store(millis(every), Ordering::Relaxed);
        self
    }

    /// How often an open event stream's token is checked again.
    pub(crate) fn stream_recheck(&self) -> Duration {
        Duration::from_millis(self.inner.recheck_streams_ms.load(Ordering::Relaxed))
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Asks every run started through this state to stop claiming, and waits
    /// for their running steps to be recorded.
    pub async fn drain_runs(&self) {
        self.inner.runs.drain().await;
    }
}

/// Whole milliseconds, at least one (a zero period would spin).
fn millis(every: Duration) -> u64 {
    u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The whole application: API, event stream, pages and static files.
pub fn router(state: AppState) -> Router {
    let api = api::routes(state.clone());
    let pages = pages::routes(state.clone());
    Router::new()
        .merge(api)
        .merge(pages)
        // Only on routes that exist: an unknown path is a 404 to any token.
        .route_layer(axum::middleware::from_fn(auth::require_right))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        // A page can read many records for a moment (a heatmap, a chart):
        // hand the memory back once the requests of a second are answered.
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            |State(state): State<AppState>, response: axum::response::Response| async move {
                state.inner.memory.trim_soon();
                response
            },
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            api::panic_response,
        ))
        // A body declared too large is refused before anything reads it; one
        // that turns out too large while read is refused by the extractor
        // reading it. Both become `ApiError::PayloadTooLarge`.
        .layer(axum::middleware::from_fn(refuse_large_bodies))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Refuses a request whose `Content-Length` is over [`MAX_BODY`].
async fn refuse_large_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return pages::refusal(&request, ApiError::PayloadTooLarge);
    }
    next.run(request).await
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    serve: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    state: AppState,
}

impl Server {
    /// Binds, starts the feed (and the worker unless disabled) and serves
    /// until [`Server::shutdown`].
    ///
    /// # Errors
    ///
    /// Options that [`ServeOptions::check`] refuses, or an address that
    /// cannot be bound.
    pub async fn start(engine: Engine, options: ServeOptions) -> Result<Server, ServeError> {
        options.check(engine.store().as_ref()).await?;
        memory::tune_allocator();
        let listener = tokio::net::TcpListener::bind(options.bind)
            .await
            .map_err(|source| ServeError::Bind {
                addr: options.bind,
                source,
            })?;
        let addr = listener.local_addr()?;

        // Every task below stops when `stop` turns true.
        let (stop, stop_rx) = watch::channel(false);
        let (feed, feed_task) =
            EventFeed::start(engine.store().clone(), options.feed_every, stop_rx.clone()).await;
        let loopback = options.bind.ip().is_loopback();
        let state = AppState::bound(
            engine.clone(),
            options.tokens.clone(),
            feed.clone(),
            loopback,
        )
        .recheck_streams_every(options.recheck_streams_every);
        let mut tasks = vec![feed_task];
        tasks.push(spawn_maintenance(engine.clone(), stop_rx.clone()));
        if options.worker {
            tasks.push(spawn_worker(
                engine,
                options.worker_parallel,
                stop_rx.clone(),
            ));
        }

        // Warm the status cache, so the first page does not wait for it.
        let warm = state.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(err) = warm.inner.status.snapshot(warm.engine()).await {
                tracing::warn!(target: "flowstone::server", error = %err,
                               "cannot compute the status");
            }
            warm.inner.memory.trim_soon();
        }));

        tasks.push(spawn_trim_after_runs(state.clone(), stop_rx.clone()));

        let app = router(state.clone());
        let mut shutdown = stop_rx;
        let serve = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                })
                .await
        });
        tracing::info!(target: "flowstone::server", %addr, worker = options.worker,
                       tokens = options.tokens.len(), "serving");
        Ok(Server {
            addr,
            stop,
            tasks,
            serve,
            state,
        })
    }

    /// The address bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `signal` completes, then shuts down.
    ///
    /// # Errors
    ///
    /// As for [`Server::shutdown`].
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        signal.await;
        self.shutdown().await
    }

    /// Stops accepting, drains runs started here, stops the worker and the
    /// feed, and waits for all of them.
    ///
    /// # Errors
    ///
    /// An I/O failure of the listener.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        self.state.drain_runs().await;
        for task in self.tasks {
            let _ = task.await;
        }
        match self.serve.await {
            Ok(result) => result.map_err(ServeError::Io),
            Err(err) => Err(ServeError::Io(std::io::Error::other(err.to_string()))),
        }
    }
}

/// The leader's maintenance loops (rescue, finishing, pruning), taking part
/// in the election with every worker and daemon of the store, until `stop`.
fn spawn_maintenance(
    engine: Engine,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (halt, halt_rx) = watch::channel(Stop::No);
        let maintain = engine.maintain(
            flowstone_core::maintenance::MaintenanceOptions::default(),
            halt_rx,
        );
        tokio::pin!(maintain);
        tokio::select! {
            () = &mut maintain => return,
            _ = stop.wait_for(|s| *s) => {}
        }
        halt.send_replace(Stop::Drain);
        maintain.await;
    })
}

/// Gives memory back once a run has finished (a run's steps, in process
/// or not, leave freed memory behind that no request would trim).
fn spawn_trim_after_runs(
    state: AppState,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut events = state.inner.feed.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) if event.kind == flowstone_core::store::EventKind::RunFinished => {
                        state.inner.memory.trim_soon();
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    })
}

/// The in-process worker: claims steps of every run until `stop`.
fn spawn_worker(
    engine: Engine,
    max_parallel: usize,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (drain, drain_rx) = watch::channel(Stop::No);
        let (progress, _) = watch::channel(flowstone_core::Progress::default());
        let opts = flowstone_core::WorkerOptions {
            max_parallel,
            ..flowstone_core::WorkerOptions::default()
        };
        let worker = engine.serve_worker(opts, drain_rx, progress);
        tokio::pin!(worker);
        let ended = tokio::select! {
            result = &mut worker => Some(result),
            _ = stop.wait_for(|s| *s) => None,
        };
        let result: Result<(), EngineError> = match ended {
            Some(result) => result,
            None => {
                drain.send_replace(Stop::Drain);
                worker.await
            }
        };
        if let Err(err) = result {
            tracing::error!(target: "flowstone::server", error = %err, "in-process worker stopped");
        }
    })
}
