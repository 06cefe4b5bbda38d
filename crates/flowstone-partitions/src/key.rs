//! Partition keys and time windows: the two values every partition definition
//! hands out.
//!
//! A [`PartitionKey`] is only a name. It is canonical when it came out of a
//! definition (`key_at`, `parse_key`, `keys`); a key built from an arbitrary
//! string with `From` is checked by nothing until a definition parses it.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The canonical name of one partition, e.g. `2013-01-01`, `AA` or
/// `2013-01-01|AA`.
///
/// Cloning is cheap (the text is shared). Ordering is the string order, which is
/// not always the index order of the definition that made the key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionKey(Arc<str>);

impl PartitionKey {
    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for PartitionKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for PartitionKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for PartitionKey {
    fn from(text: &str) -> PartitionKey {
        PartitionKey(Arc::from(text))
    }
}

impl From<String> for PartitionKey {
    fn from(text: String) -> PartitionKey {
        PartitionKey(Arc::from(text))
    }
}

impl Serialize for PartitionKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PartitionKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PartitionKey, D::Error> {
        String::deserialize(deserializer).map(PartitionKey::from)
    }
}

/// A half-open span `[start, end)` of absolute time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeWindow {
    /// The first instant inside the window.
    pub start: Timestamp,
    /// The first instant after the window.
    pub end: Timestamp,
}

impl TimeWindow {
    /// Whether `t` lies inside the window.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.start <= t && t < self.end
    }

    /// Whether the two windows share at least one instant.
    pub fn overlaps(&self, other: &TimeWindow) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// Whether the window holds no instant at all.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// The window's length; zero for an empty window.
    pub fn duration(&self) -> jiff::SignedDuration {
        if self.is_empty() {
            jiff::SignedDuration::ZERO
        } else {
            self.end.duration_since(self.start)
        }
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}
