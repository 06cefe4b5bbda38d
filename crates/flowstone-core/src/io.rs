//! I/O managers: where asset values are stored and loaded from.
//!
//! A value's location is derived from its asset key and partition key alone.
//! [`FileIoManager`] writes JSON files below one base directory and guarantees
//! two things: a partition key can never name a path outside that directory
//! (every byte outside `[A-Za-z0-9_-]` is percent-encoded, so `/`, `.` and `..`
//! cannot appear as path parts), and a file is never seen half-written (the value
//! goes to a temporary file in the same directory, which is then renamed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::ids::AssetPartition;
use crate::value::{AnyValue, ValueError, ValueType, data_version};

/// A value could not be stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Value(#[from] ValueError),
    #[error("no stored value for {0}")]
    Missing(AssetPartition),
    #[error("{0}")]
    Other(String),
}

/// What an I/O manager reports after storing a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredValue {
    /// Where the value is, e.g. a file path.
    pub location: String,
    /// A hash of the stored bytes.
    pub data_version: String,
}

/// Stores and loads asset values, partition by partition.
#[async_trait]
pub trait IoManager: Send + Sync + 'static {
    /// Stores `value` (of type `ty`) as the value of `target`, replacing the
    /// previous one only once the new one is complete.
    async fn store(
        &self,
        target: &AssetPartition,
        ty: &ValueType,
        value: &AnyValue,
    ) -> Result<StoredValue, IoError>;

    /// Loads the value of `target`.
    async fn load(&self, target: &AssetPartition, ty: &ValueType) -> Result<AnyValue, IoError>;
}

/// JSON files under a base directory: `<base>/<asset key>/<partition>.json`,
/// and `<base>/<asset key>/__value.json` for an unpartitioned asset.
#[derive(Clone, Debug)]
pub struct FileIoManager {
    base: PathBuf,
}

impl FileIoManager {
    pub fn new(base: impl Into<PathBuf>) -> Self {
        FileIoManager { base: base.into() }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The file of `target`; always below the base directory.
    pub fn path_of(&self, target: &AssetPartition) -> PathBuf {
        let mut path = self.base.clone();
        // Asset keys are checked to be `[A-Za-z0-9_-]` segments joined by `/`.
        for segment in target.asset.as_str().split('/') {
            path.push(segment);
        }
        match &target.partition {
            Some(key) => path.push(format!("{}.json", encode_path_part(key.as_str()))),
            None => path.push("__value.json"),
        }
        path
    }
}

/// Percent-encodes every byte outside `[A-Za-z0-9_-]`, so the result is a
/// single, harmless path component (never empty, never `.` or `..`).
fn encode_path_part(key: &str) -> String {
    if key.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[async_trait]
impl IoManager for FileIoManager {
    async fn store(
        &self,
        target: &AssetPartition,
        ty: &ValueType,
        value: &AnyValue,
    ) -> Result<StoredValue, IoError> {
        let bytes = ty.encode(value.as_ref())?;
        let version = data_version(&bytes);
        let path = self.path_of(target);
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.base.clone());
        let write_path = path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir, &write_path, &bytes))
            .await
            .map_err(|err| IoError::Other(format!("writer task failed: {err}")))??;
        Ok(StoredValue {
            location: path.display().to_string(),
            data_version: version,
        })
    }

    async fn load(&self, target: &AssetPartition, ty: &ValueType) -> Result<AnyValue, IoError> {
        let path = self.path_of(target);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(IoError::Missing(target.clone()));
            }
            Err(source) => {
                return Err(IoError::File {
                    action: "cannot read",
                    path,
                    source,
                });
            }
        };
        Ok(ty.decode(&bytes)?)
    }
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    use std::io::Write;

    let file_error = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| IoError::File {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(file_error("cannot create directory", dir))?;
    let mut tmp = tempfile_in(dir).map_err(file_error("cannot create a file in", dir))?;
    tmp.1
        .write_all(bytes)
        .map_err(file_error("cannot write", &tmp.0))?;
    tmp.1.flush().map_err(file_error("cannot write", &tmp.0))?;
    drop(tmp.1);
    std::fs::rename(&tmp.0, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp.0);
        IoError::File {
            action: "cannot rename into",
            path: path.to_path_buf(),
            source,
        }
    })
}

/// A new file next to the destination, with a name no other writer uses.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = format!(
        ".tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

/// Values in memory, for tests and benchmarks. Values are kept encoded, so a
/// downstream asset gets its own copy, exactly as from a file.
#[derive(Default)]
pub struct MemoryIoManager {
    values: Mutex<HashMap<AssetPartition, Vec<u8>>>,
}

impl MemoryIoManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many values are held.
    pub fn len(&self) -> usize {
        self.values.lock().map(|v| v.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl IoManager for MemoryIoManager {
    async fn store(
        &self,
        target: &AssetPartition,
        ty: &ValueType,
        value: &AnyValue,
    ) -> Result<StoredValue, IoError> {
        let bytes = ty.encode(value.as_ref())?;
        let version = data_version(&bytes);
        let mut values = self
            .values
            .lock()
            .map_err(|_| IoError::Other("poisoned".into()))?;
        values.insert(target.clone(), bytes);
        Ok(StoredValue {
            location: format!("memory:{target}"),
            data_version: version,
        })
    }

    async fn load(&self, target: &AssetPartition, ty: &ValueType) -> Result<AnyValue, IoError> {
        let values = self
            .values
            .lock()
            .map_err(|_| IoError::Other("poisoned".into()))?;
        let bytes = values
            .get(target)
            .ok_or_else(|| IoError::Missing(target.clone()))?;
        Ok(ty.decode(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AssetKey, PartitionKey};

    fn target(asset: &str, partition: Option<&str>) -> AssetPartition {
        AssetPartition::new(
            AssetKey::new(asset).unwrap(),
            partition.map(|p| PartitionKey::from(p.to_owned())),
        )
    }

    #[test]
    fn partition_keys_cannot_escape_the_base() {
        let io = FileIoManager::new("/base");
        for key in [
            "../../etc/passwd",
            "..",
            ".",
            "/abs",
            "a/../../b",
            "",
            "x\\..\\y",
            "a|b",
        ] {
            let path = io.path_of(&target("a/b", Some(key)));
            assert!(path.starts_with("/base/a/b"), "{key}: {}", path.display());
            assert_eq!(path.components().count(), 5, "{key}: {}", path.display());
            assert!(
                !path.to_string_lossy().contains(".."),
                "{key}: {}",
                path.display()
            );
        }
        let hour = io.path_of(&target("w", Some("2013-11-03T01:00-05:00")));
        assert_eq!(
            hour,
            PathBuf::from("/base/w/2013-11-03T01%3A00-05%3A00.json")
        );
    }

    #[tokio::test]
    async fn files_round_trip_and_replace_whole() {
        let dir = tempfile::tempdir().unwrap();
        let io = FileIoManager::new(dir.path());
        let ty = ValueType::of::<Vec<String>>();
        let t = target("raw", Some("2013-01-01"));
        let first: AnyValue = Box::new(vec!["a".to_owned()]);
        let stored = io.store(&t, &ty, &first).await.unwrap();
        let second: AnyValue = Box::new(vec!["b".to_owned()]);
        let stored2 = io.store(&t, &ty, &second).await.unwrap();
        assert_ne!(stored.data_version, stored2.data_version);
        let back = io.load(&t, &ty).await.unwrap();
        assert_eq!(
            back.downcast_ref::<Vec<String>>().unwrap(),
            &vec!["b".to_owned()]
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("raw"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        let missing = io
            .load(&target("raw", Some("2013-01-02")), &ty)
            .await
            .unwrap_err();
        assert!(matches!(missing, IoError::Missing(_)));
    }

    #[tokio::test]
    async fn memory_round_trips() {
        let io = MemoryIoManager::new();
        let ty = ValueType::of::<u32>();
        let t = target("n", None);
        io.store(&t, &ty, &(Box::new(7u32) as AnyValue))
            .await
            .unwrap();
        assert_eq!(
            io.load(&t, &ty).await.unwrap().downcast_ref::<u32>(),
            Some(&7)
        );
    }
}
