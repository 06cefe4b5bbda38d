//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The FlowStone command line of a code location.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Materialize assets, backfill partitions, and ask where data came from",
    after_help = "The store defaults to .flowstone/ in the working directory.\n\
                  Exit codes: 0 ok, 1 a step failed, the run was cancelled or the store \
                  failed, 2 bad usage or input, 130 interrupted (Ctrl-C)."
)]
pub struct Cli {
    /// Where the record lives: a directory, a `.db` file, `sqlite://PATH`, or
    /// `postgres://USER@HOST/DB` for a store that workers on many machines share.
    #[arg(long, global = true, env = "FLOWSTONE_STORE", value_name = "URL")]
    pub store: Option<String>,

    /// Where asset values are written by the default I/O manager
    /// [default: <store directory>/storage].
    #[arg(long, global = true, env = "FLOWSTONE_STORAGE", value_name = "DIR")]
    pub storage: Option<PathBuf>,

    /// Record runs as started by this user instead of the OS user.
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Log more (repeat for more detail); FLOWSTONE_LOG sets a tracing filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the assets, their partitions and dependencies.
    Assets,
    /// Materialize assets now (re-running partitions that exist).
    Materialize(MaterializeArgs),
    /// Materialize a range of partitions, skipping those already materialized.
    Backfill(BackfillArgs),
    /// Show per-partition state: materialized, stale, failed, missing.
    Status(StatusArgs),
    /// Show the materializations an asset partition was made from, or fed.
    Lineage(LineageArgs),
    /// Show every downstream asset partition that goes stale if one changes.
    Impact(ImpactArgs),
    /// List, show, resume or cancel runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Print a run's event log.
    Events(EventsArgs),
    /// Print the stored value of an asset partition as JSON.
    Show(ShowArgs),
    /// Work on the queued steps of every run until stopped; start one per
    /// machine (or several) beside a shared PostgreSQL store.
    Worker(WorkerArgs),
    /// Run only the leader's maintenance: rescue steps of workers that died,
    /// finish runs they left behind, forget silent workers.
    Daemon(DaemonArgs),
    /// List the workers registered in the store and the current leader.
    Workers,
    /// Serve the JSON API and the live dashboard, and work on queued runs.
    Serve(ServeArgs),
    /// Create, list or revoke the API tokens that `serve` accepts.
    #[command(subcommand)]
    Tokens(TokensCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token and print its secret, which is shown only this once;
    /// the store keeps only a hash of it.
    Create {
        /// A name to tell it by, e.g. `ci` or `alice-laptop`: letters,
        /// digits, `.`, `_` and `-`, unique among tokens not revoked.
        #[arg(value_name = "NAME")]
        name: String,

        /// `read`: the API, the dashboard and the event stream; `launch`:
        /// also launch, cancel and resume runs.
        #[arg(long, value_name = "RIGHT", value_parser = right)]
        right: flowstone_core::token::TokenRight,

        /// Refuse the token after this long (e.g. 90d, 12h, 1w) [default:
        /// it does not expire].
        #[arg(long, value_name = "DURATION", value_parser = lifetime)]
        expires_in: Option<jiff::SignedDuration>,
    },
    /// List the tokens: name, right, start of the secret, when created,
    /// last used and expiring; revoked ones with --all.
    List {
        /// Also list revoked tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token: every server sharing the store refuses it at once.
    Revoke {
        /// The token's name, as `tokens list` shows it, or its secret.
        #[arg(value_name = "NAME")]
        name: String,
    },
}

fn right(text: &str) -> Result<flowstone_core::token::TokenRight, String> {
    text.parse()
}

/// A token's lifetime: a duration such as `90d`, `12h` or `1w` (a day is 24
/// hours here).
fn lifetime(text: &str) -> Result<jiff::SignedDuration, String> {
    let bad = || {
        format!(
            "{text:?} is not a lifetime; write it like 90d, 12h, 1w or 30m (days and weeks, \
             not months or years)"
        )
    };
    let span: jiff::Span = text.trim().parse().map_err(|_| bad())?;
    let parsed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| bad())?;
    if parsed < jiff::SignedDuration::from_mins(1) {
        return Err(format!("{text:?} is too short; a token lives at least 1m"));
    }
    Ok(parsed)
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Steps run at once by this worker [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub concurrency: Option<u16>,

    /// Serve only these queues, comma-separated (e.g. `llm,default`); assets
    /// name theirs with `queue = "..."` [default: every queue].
    #[arg(long, value_name = "QUEUE,...", value_delimiter = ',', num_args = 1..)]
    pub queues: Option<Vec<String>>,

    /// How long a claimed step is held without a heartbeat before the leader
    /// rescues it (e.g. 30s, 2m); heartbeats go out at a quarter of it.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = duration)]
    pub lease: jiff::SignedDuration,

    /// On SIGTERM or Ctrl-C, how long running steps may take to finish before
    /// they are handed back to the queue for another worker.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = duration)]
    pub drain_timeout: jiff::SignedDuration,

    /// Do not take part in electing the leader that runs maintenance (run a
    /// `daemon` somewhere instead).
    #[arg(long)]
    pub no_maintenance: bool,

    #[command(flatten)]
    pub maintenance: MaintenanceArgs,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub maintenance: MaintenanceArgs,
}

#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    /// How long the leader's lease lasts; another process takes over within
    /// this time after the leader dies.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = duration)]
    pub leader_lease: jiff::SignedDuration,

    /// How long the steps of a finished run are kept in the queue before the
    /// leader prunes them (materializations, lineage and events stay).
    #[arg(long, default_value = "336h", value_name = "DURATION", value_parser = duration)]
    pub retention: jiff::SignedDuration,
}

/// A positive duration such as `30s`, `2m`, `1h 30m` or `500ms`.
fn duration(text: &str) -> Result<jiff::SignedDuration, String> {
    let parsed: jiff::SignedDuration = text.trim().parse().map_err(|_| {
        format!("{text:?} is not a duration; write it like 30s, 500ms, 2m or 1h 30m")
    })?;
    if parsed <= jiff::SignedDuration::ZERO {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(parsed)
}

/// What `--bind` accepts, said in every refusal.
const BIND_ACCEPTED: &str = "give HOST:PORT, with HOST an IP address (127.0.0.1, [::1]) or a \
                             host name (localhost), e.g. 127.0.0.1:3000 or localhost:3000";

/// A `--bind` address: `IP:PORT`, or `HOST:PORT` with a host name resolved
/// here, once (the first address it resolves to is used).
fn bind_address(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    parse_bind(text, |host, port| {
        (host, port).to_socket_addrs().map(Iterator::collect)
    })
}

/// [`bind_address`] with the resolver given, so that it can be tested
/// without asking one. `localhost` is 127.0.0.1 without asking: it must
/// be loopback, whatever the resolver says, and it is what `serve` binds
/// by default.
fn parse_bind(
    text: &str,
    resolve: impl FnOnce(&str, u16) -> std::io::Result<Vec<std::net::SocketAddr>>,
) -> Result<std::net::SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Ok(addr);
    }
    if text.starts_with('[') {
        return Err(format!(
            "{text:?} is not an IPv6 address with a port, such as [::1]:3000; {BIND_ACCEPTED}"
        ));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} has no port; {BIND_ACCEPTED}"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} in {text:?} is not a port (0 to 65535); {BIND_ACCEPTED}"))?;
    if !is_host_name(host) {
        return Err(format!(
            "{host:?} in {text:?} is neither an IP address nor a host name; {BIND_ACCEPTED}"
        ));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.eq_ignore_ascii_case("localhost") {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let found = resolve(host, port)
        .map_err(|err| format!("cannot resolve the host name {host:?}: {err}; {BIND_ACCEPTED}"))?;
    found
        .into_iter()
        .next()
        .ok_or_else(|| format!("the host name {host:?} resolves to no address; {BIND_ACCEPTED}"))
}

/// Whether `host` is a DNS name: dot-separated labels of 1 to 63 letters,
/// digits and `-` (not at either end), 253 characters at most, with an
/// optional final dot.
fn is_host_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[derive(Debug, Args)]
#[command(
    after_help = "API tokens: `tokens create NAME --right read|launch` makes one (kept \
                        hashed in the store); FLOWSTONE_API_TOKENS may also give a \
                        comma-separated list of RIGHT:SECRET.\n\
                        Once a token exists, every request needs one. Without a token the \
                        server binds only to loopback addresses."
)]
pub struct ServeArgs {
    /// The address to listen on, as IP:PORT or HOST:PORT (`localhost` is
    /// 127.0.0.1; another name is resolved once, and the first of its
    /// addresses is bound); an address other than loopback needs an API
    /// token (`tokens create`, or FLOWSTONE_API_TOKENS).
    #[arg(long, default_value = "127.0.0.1:3000", value_name = "ADDR", value_parser = bind_address)]
    pub bind: std::net::SocketAddr,

    /// Run no worker over queued runs (runs launched from the API still
    /// run, each in its own loop).
    #[arg(long)]
    pub no_worker: bool,

    /// Steps the in-process worker runs at once [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub max_parallel: Option<u16>,
}

#[derive(Debug, Args)]
pub struct MaterializeArgs {
    /// Asset keys to materialize.
    #[arg(required = true, value_name = "ASSET")]
    pub assets: Vec<String>,

    /// A partition key (repeat for several); needed for partitioned assets.
    #[arg(long = "partition", short = 'p', value_name = "KEY")]
    pub partitions: Vec<String>,

    /// Also materialize everything they read, transitively.
    #[arg(long)]
    pub with_upstream: bool,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("range").required(true).args(["all", "from"]))]
pub struct BackfillArgs {
    /// Asset keys to backfill [default: every asset].
    #[arg(value_name = "ASSET")]
    pub assets: Vec<String>,

    /// First partition key of the range.
    #[arg(long, value_name = "KEY", requires = "to", conflicts_with = "all")]
    pub from: Option<String>,

    /// Last partition key of the range (included).
    #[arg(long, value_name = "KEY", requires = "from", conflicts_with = "all")]
    pub to: Option<String>,

    /// Every partition.
    #[arg(long)]
    pub all: bool,

    /// Also backfill everything they read, transitively.
    #[arg(long)]
    pub with_upstream: bool,

    /// Run partitions that are already materialized too.
    #[arg(long)]
    pub force: bool,

    /// Also run partitions that are materialized but stale.
    #[arg(long, conflicts_with = "force")]
    pub stale: bool,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// At most N steps of the run at once, across this process and every
    /// `worker` [default: the number of CPUs here, no cap for other workers].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub max_parallel: Option<u16>,

    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The asset; without it, a summary of every asset.
    #[arg(value_name = "ASSET")]
    pub asset: Option<String>,

    /// List every partition, not only those that are not materialized.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LineageDirection {
    Upstream,
    Downstream,
}

#[derive(Debug, Args)]
pub struct LineageArgs {
    /// upstream: what it was made from; downstream: what read it.
    #[arg(value_enum)]
    pub direction: LineageDirection,

    /// The asset key.
    #[arg(value_name = "ASSET")]
    pub asset: String,

    /// The partition key (needed for a partitioned asset).
    #[arg(long, short = 'p', value_name = "KEY")]
    pub partition: Option<String>,

    /// Follow at most this many steps of lineage.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub depth: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ImpactArgs {
    /// The asset key of the partition that would change.
    #[arg(value_name = "ASSET")]
    pub asset: String,

    /// The partition key (needed for a partitioned asset).
    #[arg(long, short = 'p', value_name = "KEY")]
    pub partition: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        /// How many runs to list.
        #[arg(long, default_value_t = 20, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Show a run and its steps.
    Show {
        /// A run id, or a unique prefix of one.
        #[arg(value_name = "RUN")]
        run: String,
    },
    /// Continue an interrupted run, or one whose process died.
    Resume {
        /// A run id, or a unique prefix of one.
        #[arg(value_name = "RUN")]
        run: String,
        #[command(flatten)]
        run_args: RunArgs,
    },
    /// Cancel a run: steps not yet running are cancelled.
    Cancel {
        /// A run id, or a unique prefix of one.
        #[arg(value_name = "RUN")]
        run: String,
    },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// A run id, or a unique prefix of one.
    #[arg(value_name = "RUN")]
    pub run: String,

    /// How many events to print, from the first.
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The asset key.
    #[arg(value_name = "ASSET")]
    pub asset: String,

    /// The partition key (needed for a partitioned asset).
    #[arg(long, short = 'p', value_name = "KEY")]
    pub partition: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn no_resolver(host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
        panic!("{host} was resolved, but needs no resolver")
    }

    #[test]
    fn bind_takes_addresses_and_localhost_without_a_resolver() {
        let addr = |text| parse_bind(text, no_resolver).unwrap();
        assert_eq!(addr("127.0.0.1:3000"), "127.0.0.1:3000".parse().unwrap());
        assert_eq!(addr("[::1]:0"), "[::1]:0".parse().unwrap());
        for name in ["localhost:3000", "LocalHost:3000", "localhost.:3000"] {
            let bound = addr(name);
            assert_eq!(bound, "127.0.0.1:3000".parse().unwrap(), "{name}");
            assert!(bound.ip().is_loopback());
        }
    }

    /// Regression: `serve --bind localhost:3000` was refused as "invalid
    /// socket address syntax"; a host name is now resolved, and the first
    /// of its addresses is bound.
    #[test]
    fn bind_resolves_a_host_name_to_its_first_address() {
        let resolved = parse_bind("db.internal:8080", |host, port| {
            assert_eq!((host, port), ("db.internal", 8080));
            Ok(vec![
                "10.0.0.5:8080".parse().unwrap(),
                "10.0.0.6:8080".parse().unwrap(),
            ])
        });
        assert_eq!(resolved, Ok("10.0.0.5:8080".parse().unwrap()));

        let err = parse_bind("nowhere.example:80", |_, _| {
            Err(std::io::Error::other("no such host"))
        })
        .unwrap_err();
        assert!(
            err.contains("cannot resolve the host name \"nowhere.example\"")
                && err.contains("no such host")
                && err.contains("localhost:3000"),
            "{err}"
        );
        let err = parse_bind("empty.example:80", |_, _| Ok(vec![])).unwrap_err();
        assert!(err.contains("resolves to no address"), "{err}");
    }

    #[test]
    fn bind_refusals_say_what_is_accepted() {
        for (text, says) in [
            ("localhost", "has no port"),
            ("localhost:99999", "is not a port"),
            ("localhost:", "is not a port"),
            ("bad_host!:3000", "neither an IP address nor a host name"),
            (
                "-dash.example:3000",
                "neither an IP address nor a host name",
            ),
            (":3000", "neither an IP address nor a host name"),
            ("::1:3000", "neither an IP address nor a host name"),
            ("[::1]", "not an IPv6 address with a port"),
        ] {
            let err = parse_bind(text, no_resolver).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
            assert!(
                err.contains("HOST:PORT") && err.contains("127.0.0.1:3000"),
                "{err}"
            );
        }
    }
}
