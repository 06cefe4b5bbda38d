//! Where the database file is: parsing the store location a user gives.

use std::path::{Path, PathBuf};

use flowstone_core::store::{StoreError, StoreResult};

/// The file name used when the location is a directory.
pub const DEFAULT_FILE_NAME: &str = "flowstone.db";

/// File extensions taken to name a database file rather than a directory.
const FILE_EXTENSIONS: &[&str] = &["db", "sqlite", "sqlite3"];

const ACCEPTED: &str = "expected `sqlite://PATH`, `sqlite:PATH` or a plain PATH, where PATH \
     is a directory (the database is then `<dir>/flowstone.db`) or a file ending in `.db`, \
     `.sqlite` or `.sqlite3`";

/// A parsed store location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A database file; its directory may still have to be created.
    File(PathBuf),
    /// `sqlite::memory:`: a private in-memory database.
    Memory,
}

/// Parses `location` without touching the file system beyond looking at what
/// already exists there.
pub(crate) fn parse(location: &str) -> StoreResult<Location> {
    let fail = |what: &str| {
        StoreError::Config(format!(
            "invalid SQLite location {location:?}: {what}; {ACCEPTED}"
        ))
    };

    let trimmed = location.trim();
    let path = if let Some(rest) = trimmed.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = trimmed.strip_prefix("sqlite:") {
        rest
    } else if let Some((scheme, _)) = trimmed.split_once("://") {
        return Err(fail(&format!("the scheme `{scheme}://` is not SQLite")));
    } else {
        trimmed
    };

    if path == ":memory:" {
        return Ok(Location::Memory);
    }
    if path.is_empty() {
        return Err(fail("the path is empty"));
    }
    if path.contains('?') {
        return Err(fail("query parameters such as `?mode=` are not supported"));
    }

    let path = Path::new(path);
    let named_as_file = path
        .extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| FILE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()));
    if path.is_dir() {
        // Even a directory called `x.db` is used as a directory.
        return Ok(Location::File(path.join(DEFAULT_FILE_NAME)));
    }
    if named_as_file {
        return Ok(Location::File(path.to_path_buf()));
    }
    if path.exists() {
        return Err(fail(
            "it is an existing file whose name does not end in `.db`",
        ));
    }
    Ok(Location::File(path.join(DEFAULT_FILE_NAME)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_plain_paths() {
        let dir = std::env::temp_dir();
        let file = |p: &str| Location::File(PathBuf::from(p));

        assert_eq!(
            parse("sqlite:///var/x/flow.db").unwrap(),
            file("/var/x/flow.db")
        );
        assert_eq!(parse("sqlite:rel/flow.db").unwrap(), file("rel/flow.db"));
        assert_eq!(
            parse("state/flow.sqlite3").unwrap(),
            file("state/flow.sqlite3")
        );
        assert_eq!(parse("sqlite://state").unwrap(), file("state/flowstone.db"));
        assert_eq!(parse("sqlite::memory:").unwrap(), Location::Memory);
        assert_eq!(
            parse(dir.to_str().unwrap()).unwrap(),
            Location::File(dir.join(DEFAULT_FILE_NAME))
        );
    }

    #[test]
    fn bad_locations_say_what_is_accepted() {
        for bad in [
            "",
            "sqlite://",
            "postgres://localhost/db",
            "sqlite://x.db?mode=ro",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("invalid SQLite location"), "{bad}: {err}");
            assert!(err.contains("expected `sqlite://PATH`"), "{bad}: {err}");
        }
        let err = parse("postgres://localhost/db").unwrap_err().to_string();
        assert!(err.contains("`postgres://` is not SQLite"), "{err}");
    }
}
