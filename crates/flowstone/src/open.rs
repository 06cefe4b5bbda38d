//! Opening the store a user names: `--store`, `FLOWSTONE_STORE`, or the
//! default `.flowstone/` in the working directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flowstone_core::{Store, StoreError};
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

/// Opens the store at `location` (default [`DEFAULT_STORE`]); values go to
/// `storage`, or to `storage/` beside the database.
///
/// # Errors
///
/// [`StoreError::Config`] for a location that is not accepted (the message says
/// which forms are), and any error of the backend while opening.
pub async fn open_store(
    location: Option<&str>,
    storage: Option<&Path>,
) -> Result<OpenedStore, StoreError> {
    let location = location
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .unwrap_or(DEFAULT_STORE);
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        return Err(StoreError::Config(format!(
            "cannot open {location:?}: this build has no PostgreSQL store yet; use a SQLite \
             location such as .flowstone, ./store.db or sqlite://PATH"
        )));
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
