//! Static partitions: a fixed, ordered list of names.
//!
//! Keys are kept in the order given; the index of a key is its position. Every
//! key is non-empty, unique, and free of the characters that would break a
//! multi key (`|`) or a file path (`/`, `\`, control characters, `.`, `..`).

use std::collections::HashMap;

use crate::PartitionsDef;
use crate::error::{PartitionKeyError, PartitionsError, list_some};
use crate::key::PartitionKey;

/// A fixed list of partition keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPartitions {
    keys: Vec<PartitionKey>,
    /// Each key's position in `keys`.
    positions: HashMap<PartitionKey, u64>,
}

impl StaticPartitions {
    /// Partitions named by `keys`, in that order.
    ///
    /// # Errors
    ///
    /// No key at all, a key given twice, or a key that is empty or holds `|`,
    /// `/`, `\` or a control character, or is `.` or `..`.
    #[allow(clippy::new_ret_no_self)] // the contract returns the enum every definition shares
    pub fn new<I>(keys: I) -> Result<PartitionsDef, PartitionsError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut list = Vec::new();
        let mut positions = HashMap::new();
        for key in keys {
            let key: String = key.into();
            check_key(&key)?;
            let key = PartitionKey::from(key);
            if positions.insert(key.clone(), list.len() as u64).is_some() {
                return Err(PartitionsError::DuplicateKey(key.as_str().to_owned()));
            }
            list.push(key);
        }
        if list.is_empty() {
            return Err(PartitionsError::EmptyStatic);
        }
        Ok(PartitionsDef::Static(StaticPartitions {
            keys: list,
            positions,
        }))
    }

    /// The keys, in index order.
    pub fn keys(&self) -> &[PartitionKey] {
        &self.keys
    }

    /// How many keys there are.
    pub fn len(&self) -> u64 {
        self.keys.len() as u64
    }

    /// Always false: a static definition has at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn key_at(&self, index: u64) -> Option<PartitionKey> {
        self.keys.get(usize::try_from(index).ok()?).cloned()
    }

    /// The index and stored key for `key`.
    pub(crate) fn parse(&self, key: &str) -> Result<(u64, PartitionKey), PartitionKeyError> {
        match self.positions.get_key_value(key) {
            Some((stored, &index)) => Ok((index, stored.clone())),
            None => Err(PartitionKeyError::Unknown {
                key: key.to_owned(),
                valid: self.listing(),
            }),
        }
    }

    /// "AA, B6, ... and 4 more".
    pub(crate) fn listing(&self) -> String {
        list_some(self.keys.iter().map(PartitionKey::as_str))
    }
}

fn check_key(key: &str) -> Result<(), PartitionsError> {
    let reason = if key.is_empty() {
        Some("it is empty")
    } else if key == "." || key == ".." {
        Some("it is a path step")
    } else if key.contains('|') {
        Some("it holds '|', which separates the parts of multi keys")
    } else if key.contains(['/', '\\']) {
        Some("it holds a path separator")
    } else if key.chars().any(char::is_control) {
        Some("it holds a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PartitionsError::InvalidKey {
            key: key.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}
