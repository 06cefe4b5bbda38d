//! A complete command line for a user's [`Definitions`], so that a code
//! location's `main` is one line:
//!
//! ```no_run
//! # fn definitions() -> Result<flowstone::Definitions, flowstone::DefinitionErrors> {
//! #     flowstone::Definitions::builder().build()
//! # }
//! fn main() -> std::process::ExitCode {
//!     flowstone::cli::main(definitions())
//! }
//! ```
//!
//! Every command is a thin layer over an [`Engine`] call; `--json` prints that
//! call's typed result. Exit codes: 0 ok, 1 a step failed (or the store
//! failed), 2 bad usage or input.

mod args;
mod cluster;
mod output;
mod progress;
mod tokens;

use std::process::ExitCode;
use std::sync::Arc;

use flowstone_core::engine::Launch;
use flowstone_core::query::Direction;
use flowstone_core::store::{RunState, Trigger};
use flowstone_core::{
    AssetKey, DefinitionErrors, Definitions, Engine, EngineError, PartitionSelection, RunId,
    RunOutcome, RunRequest,
};

pub use args::Cli;
use args::{
    BackfillArgs, Command, LineageDirection, MaterializeArgs, RunArgs, RunsCommand, ServeArgs,
    TokensCommand,
};
use output::Printer;

/// Exit code when everything went well.
pub const EXIT_OK: u8 = 0;
/// Exit code when a step failed, or the store could not be used.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for bad usage or input.
pub const EXIT_USAGE: u8 = 2;

/// Parses the process arguments and runs the command; the whole of a code
/// location's `main`.
pub fn main(defs: Result<Definitions, DefinitionErrors>) -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};

    // Help and version name the program the user ran, not this library.
    let name = std::env::args_os()
        .next()
        .and_then(|arg0| {
            let stem = std::path::Path::new(&arg0)
                .file_stem()?
                .to_string_lossy()
                .into_owned();
            (!stem.is_empty()).then_some(stem)
        })
        .unwrap_or_else(|| "flowstone".to_owned());
    let parsed = Cli::command()
        .name(name.clone())
        .bin_name(name)
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            });
        }
    };
    ExitCode::from(run(defs, cli))
}

/// Runs a parsed command line; returns the exit code.
pub fn run(defs: Result<Definitions, DefinitionErrors>, cli: Cli) -> u8 {
    init_tracing(cli.verbose);
    quiet_asset_panics();
    let defs = match defs {
        Ok(defs) => defs,
        Err(errors) => {
            eprintln!("error: {errors}");
            return EXIT_USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return EXIT_FAILED;
        }
    };
    runtime.block_on(async move {
        match dispatch(defs, cli).await {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {}", err.message);
                err.code
            }
        }
    })
}

/// An error to print, with the exit code it calls for.
struct Failure {
    message: String,
    code: u8,
}

impl From<EngineError> for Failure {
    fn from(err: EngineError) -> Self {
        let code = if err.is_user_error() {
            EXIT_USAGE
        } else {
            EXIT_FAILED
        };
        Failure {
            message: err.to_string(),
            code,
        }
    }
}

impl From<flowstone_core::StoreError> for Failure {
    fn from(err: flowstone_core::StoreError) -> Self {
        let code = match err {
            flowstone_core::StoreError::Config(_) | flowstone_core::StoreError::NotFound(_) => {
                EXIT_USAGE
            }
            _ => EXIT_FAILED,
        };
        Failure {
            message: err.to_string(),
            code,
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: EXIT_USAGE,
    }
}

async fn dispatch(defs: Definitions, cli: Cli) -> Result<u8, Failure> {
    let printer = Printer::new(cli.json);
    if let Command::Assets = cli.command {
        printer.assets(&defs);
        return Ok(EXIT_OK);
    }

    // Commands that only read must not create a store where a typo points.
    let writes = matches!(
        cli.command,
        Command::Materialize(_)
            | Command::Backfill(_)
            | Command::Worker(_)
            | Command::Daemon(_)
            | Command::Serve(_)
            | Command::Runs(RunsCommand::Resume { .. } | RunsCommand::Cancel { .. })
            | Command::Tokens(TokensCommand::Create { .. })
    );
    if let Some(location) = &cli.store
        && location.trim().is_empty()
    {
        return Err(usage(
            "--store is empty; give a directory, a .db file or sqlite://PATH",
        ));
    }
    if !writes {
        crate::open::check_exists(cli.store.as_deref())?;
    }
    let opened = crate::open_store(cli.store.as_deref(), cli.storage.as_deref()).await?;
    let mut engine = Engine::new(defs, opened.store.clone()).with_default_io(Arc::new(
        flowstone_core::FileIoManager::new(&opened.storage),
    ));
    if let Some(user) = &cli.as_user {
        if user.trim().is_empty() {
            return Err(usage("--as needs a non-empty user name"));
        }
        engine = engine.with_user(user.trim());
    }
    let ctx = Ctx {
        engine,
        printer,
        store_location: opened.describe,
    };

    match cli.command {
        Command::Assets => unreachable!("handled above"),
        Command::Materialize(args) => ctx.materialize(args).await,
        Command::Backfill(args) => ctx.backfill(args).await,
        Command::Status(args) => {
            match args.asset {
                Some(asset) => {
                    let status = ctx.engine.status(&asset).await?;
                    let def = ctx.engine.definitions().lookup(&asset).map_err(usage)?;
                    ctx.printer
                        .status(&status, def.partitions.as_ref(), args.all);
                }
                None => {
                    let all = ctx.engine.statuses().await?;
                    ctx.printer.status_summary(&all);
                }
            }
            Ok(EXIT_OK)
        }
        Command::Lineage(args) => {
            let direction = match args.direction {
                LineageDirection::Upstream => Direction::Upstream,
                LineageDirection::Downstream => Direction::Downstream,
            };
            let lineage = ctx
                .engine
                .lineage_to_depth(
                    &args.asset,
                    args.partition.as_deref(),
                    direction,
                    args.depth,
                )
                .await?;
            ctx.printer.lineage(&lineage);
            Ok(EXIT_OK)
        }
        Command::Impact(args) => {
            let target = ctx.engine.target(&args.asset, args.partition.as_deref())?;
            let impact = ctx.engine.impact(&args.asset, args.partition.as_deref())?;
            ctx.printer.impact(&target, &impact);
            Ok(EXIT_OK)
        }
        Command::Runs(RunsCommand::List { limit }) => {
            let runs = ctx.engine.store().runs(limit).await?;
            let orphaned = !ctx.engine.any_live_worker().await?;
            ctx.printer.runs(&runs, orphaned);
            Ok(EXIT_OK)
        }
        Command::Runs(RunsCommand::Show { run }) => {
            let id = ctx.find_run(&run).await?;
            let record = ctx
                .engine
                .store()
                .run(id)
                .await?
                .ok_or(EngineError::RunNotFound(id))?;
            let steps = ctx.engine.store().steps(id).await?;
            ctx.printer.run(&record, &steps);
            Ok(EXIT_OK)
        }
        Command::Runs(RunsCommand::Resume { run, run_args }) => {
            let id = ctx.find_run(&run).await?;
            let handle = ctx.engine.resume(id, parallelism(&run_args)).await?;
            let total = ctx.engine.store().step_counts(id).await?.total();
            let outcome = progress::watch(handle, total, ctx.show_progress(&run_args)).await?;
            Ok(ctx.finish(&outcome, 0, 0))
        }
        Command::Runs(RunsCommand::Cancel { run }) => {
            let id = ctx.find_run(&run).await?;
            let changed = ctx.engine.cancel(id).await?;
            ctx.printer.cancelled(id, changed);
            Ok(EXIT_OK)
        }
        Command::Events(args) => {
            let id = ctx.find_run(&args.run).await?;
            let events = ctx.engine.store().events(id, None, args.limit).await?;
            ctx.printer.events(&events, args.limit);
            Ok(EXIT_OK)
        }
        Command::Serve(args) => ctx.serve(args).await,
        Command::Show(args) => {
            let (record, value) = ctx
                .engine
                .value(&args.asset, args.partition.as_deref())
                .await?;
            ctx.printer.value(&record, &value);
            Ok(EXIT_OK)
        }
        Command::Worker(args) => cluster::worker(&ctx, args).await,
        Command::Daemon(args) => cluster::daemon(&ctx, args).await,
        Command::Workers => cluster::workers(&ctx).await,
        Command::Tokens(command) => tokens::tokens(&ctx, command).await,
    }
}

/// What every command shares once the store is open.
struct Ctx {
    engine: Engine,
    printer: Printer,
    store_location: String,
}

impl Ctx {
    async fn materialize(&self, args: MaterializeArgs) -> Result<u8, Failure> {
        let assets = self.asset_keys(&args.assets)?;
        let partitions = if args.partitions.is_empty() {
            PartitionSelection::Unspecified
        } else {
            PartitionSelection::Keys(args.partitions.clone())
        };
        let request = capped(
            RunRequest::materialize(assets, partitions)
                .with_upstream(args.with_upstream)
                .trigger(Trigger::Cli),
            &args.run,
        );
        self.launch(request, &args.run).await
    }

    async fn backfill(&self, args: BackfillArgs) -> Result<u8, Failure> {
        let assets = self.asset_keys(&args.assets)?;
        let partitions = match (args.from, args.to) {
            (Some(from), Some(to)) => PartitionSelection::Range { from, to },
            _ => PartitionSelection::All,
        };
        let request = RunRequest::backfill(assets, partitions)
            .with_upstream(args.with_upstream)
            .force(args.force)
            .refresh_stale(args.stale);
        self.launch(capped(request, &args.run), &args.run).await
    }

    async fn launch(&self, request: RunRequest, run_args: &RunArgs) -> Result<u8, Failure> {
        match self.engine.launch(request).await? {
            Launch::NothingToDo { plan } => {
                self.printer.nothing_to_do(&plan, &self.store_location);
                Ok(EXIT_OK)
            }
            Launch::Started { run, plan, handle } => {
                self.printer.run_started(&run, &plan);
                let total = run.steps.total();
                let outcome = progress::watch(handle, total, self.show_progress(run_args)).await?;
                Ok(self.finish(&outcome, plan.already_materialized, plan.left_out))
            }
        }
    }

    async fn serve(self, args: ServeArgs) -> Result<u8, Failure> {
        let spec = std::env::var("FLOWSTONE_API_TOKENS").unwrap_or_default();
        let tokens: flowstone_server::Tokens = spec
            .parse()
            .map_err(|err: flowstone_server::TokenSpecError| usage(err.to_string()))?;
        let options = flowstone_server::ServeOptions {
            bind: args.bind,
            tokens,
            worker: !args.no_worker,
            worker_parallel: args
                .max_parallel
                .map_or_else(flowstone_core::default_parallelism, usize::from),
            ..flowstone_server::ServeOptions::default()
        };
        // Listen for signals before the port answers, so that a SIGTERM sent
        // as soon as it does stops the server cleanly rather than killing it.
        let mut interrupts = progress::Interrupts::new();
        let server = flowstone_server::Server::start(self.engine, options)
            .await
            .map_err(|err| match err {
                flowstone_server::ServeError::OpenWithoutToken(_) => usage(err.to_string()),
                other => Failure {
                    message: other.to_string(),
                    code: EXIT_FAILED,
                },
            })?;
        eprintln!(
            "serving http://{} (store: {}); Ctrl-C stops",
            server.addr(),
            self.store_location
        );
        server
            .run_until(interrupts.recv())
            .await
            .map_err(|err| Failure {
                message: err.to_string(),
                code: EXIT_FAILED,
            })?;
        Ok(EXIT_OK)
    }

    fn finish(&self, outcome: &RunOutcome, already_materialized: u64, left_out: u64) -> u8 {
        let store = &self.store_location;
        self.printer
            .run_finished(outcome, already_materialized, left_out, store);
        match outcome.run.state {
            RunState::Succeeded => EXIT_OK,
            RunState::Interrupted | RunState::Running => {
                if outcome.run.steps.failed + outcome.run.steps.skipped > 0 {
                    EXIT_FAILED
                } else {
                    130
                }
            }
            RunState::Failed | RunState::Cancelled => EXIT_FAILED,
        }
    }

    fn show_progress(&self, args: &RunArgs) -> bool {
        !self.printer.json() && !args.quiet
    }

    fn asset_keys(&self, names: &[String]) -> Result<Vec<AssetKey>, Failure> {
        let defs = self.engine.definitions();
        names
            .iter()
            .map(|n| defs.lookup(n).map(|d| d.key.clone()).map_err(usage))
            .collect()
    }

    /// A run id, or a unique prefix of one among recent runs.
    async fn find_run(&self, text: &str) -> Result<RunId, Failure> {
        if let Ok(id) = text.parse::<RunId>() {
            return Ok(id);
        }
        let prefix = text.trim().to_ascii_lowercase();
        if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(usage(format!(
                "invalid run id {text:?}: expected a run id from `runs list` (or at least its \
                 first 4 characters)"
            )));
        }
        let runs = self.engine.store().runs(10_000).await?;
        let matches: Vec<RunId> = runs
            .iter()
            .map(|r| r.id)
            .filter(|id| id.to_string().starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(usage(format!(
                "no run id starts with {text:?}; `runs list` shows the runs"
            ))),
            _ => Err(usage(format!(
                "{} runs start with {text:?}; give more of the id",
                matches.len()
            ))),
        }
    }
}

/// The request with the run's cap from `--max-parallel`, when given.
fn capped(request: RunRequest, args: &RunArgs) -> RunRequest {
    match args.max_parallel {
        Some(n) => request.max_parallel(usize::from(n)),
        None => request,
    }
}

fn parallelism(args: &RunArgs) -> usize {
    args.max_parallel
        .map_or_else(flowstone_core::default_parallelism, usize::from)
}

/// An asset that panics fails its step, and the panic message is recorded
/// there; the default hook would also print it (with a backtrace when
/// `RUST_BACKTRACE` is set) over the progress bar, once per attempt. Panics on
/// the runtime's worker threads are logged instead; others keep the default.
fn quiet_asset_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let worker = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("tokio-runtime"));
        if worker {
            tracing::debug!(panic = %info, "an asset panicked; its step records the message");
        } else {
            default(info);
        }
    }));
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;

    let default = match verbose {
        0 => "warn",
        1 => "info,flowstone=info",
        2 => "debug",
        _ => "trace",
    };
    let filter = std::env::var("FLOWSTONE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
