//! Names and ids: asset keys, run, step, materialization and worker ids.
//!
//! An [`AssetKey`] is validated once, when it is made, so every other part of
//! FlowStone can use it in file paths, SQL and URLs without escaping rules of its
//! own: it is one or more segments of `[A-Za-z0-9_-]` joined by `/`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use flowstone_partitions::PartitionKey;

/// The stable name of an asset, such as `analytics/cleaned_events`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AssetKey(Arc<str>);

/// A string that is not a valid asset key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid asset key {key:?}: {reason}; an asset key is one or more segments of letters, \
     digits, `_` or `-` joined by `/`, such as \"analytics/cleaned_events\""
)]
pub struct AssetKeyError {
    pub key: String,
    pub reason: &'static str,
}

impl AssetKey {
    /// Checks and wraps `key`.
    ///
    /// # Errors
    ///
    /// When `key` is empty, has an empty segment, or has a character other than
    /// ASCII letters, digits, `_`, `-` and the `/` separator.
    pub fn new(key: impl AsRef<str>) -> Result<Self, AssetKeyError> {
        let key = key.as_ref();
        let fail = |reason| AssetKeyError {
            key: key.to_owned(),
            reason,
        };
        if key.is_empty() {
            return Err(fail("it is empty"));
        }
        if key.len() > 255 {
            return Err(fail("it is longer than 255 characters"));
        }
        for segment in key.split('/') {
            if segment.is_empty() {
                return Err(fail("it has an empty segment"));
            }
            let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if !segment.chars().all(valid) {
                return Err(fail("it has a character that is not allowed"));
            }
        }
        Ok(AssetKey(Arc::from(key)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments before the last one, joined by `/`; empty for a one-segment key.
    pub fn prefix(&self) -> &str {
        self.0.rsplit_once('/').map_or("", |(prefix, _)| prefix)
    }
}

impl fmt::Display for AssetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AssetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssetKey({:?})", &*self.0)
    }
}

impl FromStr for AssetKey {
    type Err = AssetKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AssetKey::new(s)
    }
}

impl TryFrom<String> for AssetKey {
    type Error = AssetKeyError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        AssetKey::new(s)
    }
}

impl From<AssetKey> for String {
    fn from(key: AssetKey) -> String {
        key.0.to_string()
    }
}

impl AsRef<str> for AssetKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One run: a request to materialize a selection of asset partitions.
///
/// Time-ordered (UUID v7), so sorting by id sorts by creation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub uuid::Uuid);

impl RunId {
    pub fn new() -> Self {
        RunId(uuid::Uuid::now_v7())
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({})", self.0)
    }
}

/// A string that is not a run id.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid run id {0:?}: expected a UUID such as \"01890a5d-ac96-774b-bcce-b302099a8057\"")]
pub struct RunIdError(pub String);

impl FromStr for RunId {
    type Err = RunIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s.trim())
            .map(RunId)
            .map_err(|_| RunIdError(s.to_owned()))
    }
}

macro_rules! int_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

int_id!(
    /// One step: an asset partition inside a run, the unit of the queue.
    StepId
);
int_id!(
    /// One recorded materialization.
    MaterializationId
);
int_id!(
    /// One event in the append-only event log.
    EventId
);

/// The process that claims and runs steps: `host:pid:random`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl WorkerId {
    /// A fresh id for this process.
    pub fn for_this_process() -> Self {
        let host = crate::host_name();
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        WorkerId(format!(
            "{host}:{}:{}",
            std::process::id(),
            &nonce[nonce.len() - 8..]
        ))
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An asset key with an optional partition key: one thing that can be materialized.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct AssetPartition {
    pub asset: AssetKey,
    pub partition: Option<PartitionKey>,
}

impl AssetPartition {
    pub fn new(asset: AssetKey, partition: Option<PartitionKey>) -> Self {
        AssetPartition { asset, partition }
    }
}

impl fmt::Display for AssetPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.partition {
            Some(p) => write!(f, "{}[{}]", self.asset, p),
            None => write!(f, "{}", self.asset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_keys_are_checked() {
        assert!(AssetKey::new("raw_flights").is_ok());
        assert!(AssetKey::new("analytics/cleaned-events").is_ok());
        assert_eq!(AssetKey::new("a/b").unwrap().prefix(), "a");
        for bad in ["", "/a", "a/", "a//b", "a b", "../x", "a.b", "é"] {
            let err = AssetKey::new(bad).unwrap_err();
            assert!(
                err.to_string().contains("invalid asset key"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn run_ids_parse_and_print() {
        let id = RunId::new();
        assert_eq!(id.to_string().parse::<RunId>().unwrap(), id);
        assert!(
            "nope"
                .parse::<RunId>()
                .unwrap_err()
                .to_string()
                .contains("expected a UUID")
        );
    }
}
