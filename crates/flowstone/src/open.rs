//! Opening the store a user names: `--store`, `FLOWSTONE_STORE`, or the
//! default `.flowstone/` in the working directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flowstone_core::{Store, StoreError};
use flowstone_postgres::PostgresStore;
use flowstone_sqlite::SqliteStore;

/// The store location used when none is given.
pub const DEFAULT_STORE: &str = ".flowstone";

/// An open store, with where the default I/O manager keeps values.
pub struct OpenedStore {
    pub store: Arc<dyn Store>,
    /// The directory of the default file I/O manager.
    pub storage: PathBuf,
    /// The location, as a person would want to read it.
    pub describe: String,
}

/// Opens the store at `location` (default [`DEFAULT_STORE`]): a SQLite
/// location, or a `postgres://` / `postgresql://` URL. Values go to
/// `storage`, or by default to `storage/` beside the SQLite database, or to
/// `.flowstone/storage` in the working directory for PostgreSQL.
///
/// # Errors
///
/// [`StoreError::Config`] for a location that is not accepted (the message says
/// which forms are) or a PostgreSQL server that cannot be reached, and any
/// error of the backend while opening.
pub async fn open_store(
    location: Option<&str>,
    storage: Option<&Path>,
) -> Result<OpenedStore, StoreError> {
    let location = location
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .unwrap_or(DEFAULT_STORE);
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        // The database holds the record; values stay on files, as with SQLite.
        let store = PostgresStore::connect(location).await?;
        let describe = store.describe();
        let storage = storage.map_or_else(
            || PathBuf::from(DEFAULT_STORE).join("storage"),
            Path::to_path_buf,
        );
        return Ok(OpenedStore {
            store: Arc::new(store),
            storage,
            describe,
        });
    }
    let store = SqliteStore::open(location).await?;
    let describe = store.describe();
    let storage = match storage {
        Some(dir) => dir.to_path_buf(),
        None => Path::new(describe.strip_prefix("sqlite://").unwrap_or(&describe))
            .parent()
            .map(|dir| dir.join("storage"))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE).join("storage")),
    };
    Ok(OpenedStore {
        store: Arc::new(store),
        storage,
        describe,
    })
}

/// Checks that a store exists at `location` (default [`DEFAULT_STORE`]), for
/// commands that only read: they must not create one where a typo points.
///
/// # Errors
///
/// [`StoreError::Config`] naming the location when nothing is there.
pub fn check_exists(location: Option<&str>) -> Result<(), StoreError> {
    let location = location.map(str::trim).unwrap_or(DEFAULT_STORE);
    if location.contains("://") && !location.starts_with("sqlite://") {
        return Ok(());
    }
    let path = location
        .strip_prefix("sqlite://")
        .or_else(|| location.strip_prefix("sqlite:"))
        .unwrap_or(location);
    // A directory holds its database in a file of its own; an empty
    // directory is no store either.
    let path = Path::new(path);
    let database = if path.is_dir() {
        path.join(flowstone_sqlite::DEFAULT_FILE_NAME)
    } else {
        path.to_path_buf()
    };
    if path.as_os_str() == ":memory:" || database.exists() {
        return Ok(());
    }
    Err(StoreError::Config(format!(
        "no store at {location}: nothing has been recorded there yet (run materialize, \
         backfill or tokens create first), or --store / FLOWSTONE_STORE points somewhere else"
    )))
}

impl OpenedStore {
    /// An engine on this store whose default I/O manager writes to
    /// [`OpenedStore::storage`], as the CLI does.
    pub fn engine(self, defs: flowstone_core::Definitions) -> flowstone_core::Engine {
        flowstone_core::Engine::new(defs, self.store)
            .with_default_io(Arc::new(flowstone_core::FileIoManager::new(self.storage)))
    }
}
