//! A fresh database per test (feature `testing`), for this crate's tests and
//! for any crate that runs FlowStone on PostgreSQL in its tests.
//!
//! The server is the one `FLOWSTONE_TEST_DATABASE_URL` names (default
//! [`DEFAULT_SERVER`]). Each [`TestDatabase`] creates a database of its own,
//! named `flowstone_test_<uuid>`, and drops it when it goes out of scope,
//! including while a failing test unwinds.
//!
//! When the server cannot be reached, [`TestDatabase::create`] returns `None`
//! after printing `skipping: ...` to stderr, so a test returns early and
//! passes; with the environment variable `CI` set it panics instead, because
//! CI must run these tests, not skip them.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

/// The server used when `FLOWSTONE_TEST_DATABASE_URL` is not set.
pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The prefix of every database a test creates; nothing else is ever dropped.
pub const PREFIX: &str = "flowstone_test_";

/// How long to wait for the server before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A database created for one test, dropped with this value.
pub struct TestDatabase {
    /// Options for the server's maintenance database, to drop ours from.
    server: PgConnectOptions,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates a fresh, empty database on the test server.
    ///
    /// Returns `None`, after printing why to stderr, when the server is not
    /// reachable and `CI` is not set.
    ///
    /// # Panics
    ///
    /// When the server is not reachable and `CI` is set, and when the server
    /// is reachable but refuses to create the database.
    pub async fn create() -> Option<TestDatabase> {
        let server_url = std::env::var("FLOWSTONE_TEST_DATABASE_URL")
            .ok()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let shown = crate::redact(&server_url);
        let server = match PgConnectOptions::from_str(&server_url) {
            Ok(options) => options,
            Err(err) => {
                panic!("FLOWSTONE_TEST_DATABASE_URL {shown} is not a PostgreSQL URL: {err}")
            }
        };

        let mut conn = match connect(&server).await {
            Ok(conn) => conn,
            Err(err) if std::env::var_os("CI").is_some() => panic!(
                "PostgreSQL is not reachable at {shown} ({err}); .ci/run starts it with \
                 `pg_ctlcluster --skip-systemctl-redirect <version> main start`, and \
                 FLOWSTONE_TEST_DATABASE_URL names another server"
            ),
            Err(err) => {
                eprintln!("skipping: PostgreSQL not reachable at {shown} ({err})");
                return None;
            }
        };

        // The name is the prefix and hex digits, so quoting it is enough.
        let name = format!("{PREFIX}{}", uuid::Uuid::now_v7().simple());
        let create = sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""));
        if let Err(err) = sqlx::query(create).execute(&mut conn).await {
            panic!("cannot create the test database {name} on {shown}: {err}");
        }
        let _ = conn.close().await;

        let url = server.clone().database(&name).to_url_lossy().to_string();
        Some(TestDatabase { server, name, url })
    }

    /// The URL of this database, for [`PostgresStore::connect`](crate::PostgresStore::connect).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    /// Drops the database, ending any connection still open to it (a store
    /// the test did not drop first). Runs on a thread of its own, since a
    /// test's runtime may be the one calling; a failure is printed, not
    /// raised, so that it never hides the test's own panic.
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = connect(&server).await?;
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(drop))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("could not drop the test database {}: {err}", self.name),
            Err(_) => eprintln!(
                "could not drop the test database {}: the thread panicked",
                self.name
            ),
        }
    }
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}
