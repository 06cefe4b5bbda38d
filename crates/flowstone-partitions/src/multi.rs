//! Multi partitions: the product of two or more dimensions.
//!
//! A key joins one key per dimension with `|`, in declared order. Indices are
//! mixed radix with the first dimension most significant, so all keys sharing
//! a first-dimension key sit next to each other. At most one dimension is a
//! time dimension, and no dimension is itself multi.

use std::collections::HashSet;

use jiff::Timestamp;

use crate::PartitionsDef;
use crate::error::{PartitionKeyError, PartitionsError};
use crate::key::{PartitionKey, TimeWindow};

/// Dimensions and their definitions, in declared order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiPartitions {
    dims: Vec<(String, PartitionsDef)>,
}

impl MultiPartitions {
    /// The product of `dims`, each a name and a time or static definition.
    ///
    /// # Errors
    ///
    /// Fewer than two dimensions, a duplicate or invalid name, a multi
    /// dimension, or two time dimensions.
    #[allow(clippy::new_ret_no_self)] // the contract returns the enum every definition shares
    pub fn new(dims: Vec<(String, PartitionsDef)>) -> Result<PartitionsDef, PartitionsError> {
        if dims.len() < 2 {
            return Err(PartitionsError::TooFewDimensions(dims.len()));
        }

        let mut names = HashSet::new();
        let mut time_dim: Option<&str> = None;
        for (name, def) in &dims {
            if name.is_empty() || name.contains('|') {
                return Err(PartitionsError::InvalidDimension {
                    name: name.clone(),
                    reason: "a dimension name must be non-empty and hold no '|'",
                });
            }
            if !names.insert(name.as_str()) {
                return Err(PartitionsError::DuplicateDimension(name.clone()));
            }
            match def {
                PartitionsDef::Multi(_) => return Err(PartitionsError::NestedMulti(name.clone())),
                PartitionsDef::Time(_) => match time_dim {
                    Some(first) => {
                        return Err(PartitionsError::TwoTimeDimensions {
                            first: first.to_owned(),
                            second: name.clone(),
                        });
                    }
                    None => time_dim = Some(name),
                },
                PartitionsDef::Static(_) => {}
            }
        }

        Ok(PartitionsDef::Multi(MultiPartitions { dims }))
    }

    /// The dimensions, in declared order.
    pub fn dimensions(&self) -> &[(String, PartitionsDef)] {
        &self.dims
    }

    /// The position and definition of dimension `name`.
    pub fn dimension(&self, name: &str) -> Option<(usize, &PartitionsDef)> {
        self.dims
            .iter()
            .position(|(n, _)| n == name)
            .map(|at| (at, &self.dims[at].1))
    }

    /// The time dimension, if there is one.
    pub fn time_dimension(&self) -> Option<(&str, &crate::TimeWindowPartitions)> {
        self.dims.iter().find_map(|(name, def)| match def {
            PartitionsDef::Time(time) => Some((name.as_str(), time)),
            _ => None,
        })
    }

    /// Each dimension's length at `now`.
    pub(crate) fn radices(&self, now: Timestamp) -> Vec<u64> {
        self.dims.iter().map(|(_, def)| def.len(now)).collect()
    }

    /// The product of the dimension lengths, saturating at `u64::MAX`.
    pub(crate) fn len(&self, now: Timestamp) -> u64 {
        self.radices(now)
            .into_iter()
            .fold(1u64, u64::saturating_mul)
    }

    pub(crate) fn key_at(&self, index: u64, now: Timestamp) -> Option<PartitionKey> {
        let radices = self.radices(now);
        let digits = split_index(index, &radices)?;
        let mut parts = Vec::with_capacity(self.dims.len());
        for ((_, def), digit) in self.dims.iter().zip(digits) {
            parts.push(def.key_at(digit, now)?);
        }
        Some(join(parts.iter().map(PartitionKey::as_str)))
    }

    /// The index and canonical key of `key` at `now`.
    pub(crate) fn parse(
        &self,
        key: &str,
        now: Timestamp,
    ) -> Result<(u64, PartitionKey), PartitionKeyError> {
        let parts: Vec<&str> = key.split('|').collect();
        if parts.len() != self.dims.len() {
            return Err(PartitionKeyError::WrongParts {
                key: key.to_owned(),
                def: format!("multi partitions {}", self.describe()),
                expected: self.dims.len(),
                got: parts.len(),
                example: self.example_key(now),
            });
        }

        let mut digits = Vec::with_capacity(parts.len());
        let mut canonical = Vec::with_capacity(parts.len());
        for ((name, def), part) in self.dims.iter().zip(&parts) {
            let (digit, part_key) =
                def.parse_indexed(part, now)
                    .map_err(|source| PartitionKeyError::InDimension {
                        key: key.to_owned(),
                        dimension: name.clone(),
                        source: Box::new(source),
                    })?;
            digits.push(digit);
            canonical.push(part_key);
        }

        let index = join_index(&digits, &self.radices(now));
        Ok((index, join(canonical.iter().map(PartitionKey::as_str))))
    }

    /// The window of the time dimension's part of `key`.
    pub(crate) fn time_window(&self, key: &PartitionKey) -> Option<TimeWindow> {
        let (name, _) = self.time_dimension()?;
        let part = self.dimension_key(key, name)?;
        self.dims
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, def)| def.time_window(&PartitionKey::from(part)))
    }

    pub(crate) fn dimension_key<'k>(&self, key: &'k PartitionKey, dim: &str) -> Option<&'k str> {
        let (at, _) = self.dimension(dim)?;
        let mut parts = key.as_str().split('|');
        let part = parts.nth(at)?;
        (key.as_str().split('|').count() == self.dims.len()).then_some(part)
    }

    /// "date × carrier".
    pub(crate) fn describe(&self) -> String {
        let names: Vec<&str> = self.dims.iter().map(|(n, _)| n.as_str()).collect();
        names.join(" × ")
    }

    pub(crate) fn example_key(&self, now: Timestamp) -> String {
        let parts: Vec<String> = self
            .dims
            .iter()
            .map(|(_, def)| def.example_key(now))
            .collect();
        parts.join("|")
    }
}

/// Mixed-radix digits of `index`, most significant first; `None` when out of
/// range.
pub(crate) fn split_index(index: u64, radices: &[u64]) -> Option<Vec<u64>> {
    let mut rest = index;
    let mut digits = vec![0; radices.len()];
    for (digit, &radix) in digits.iter_mut().zip(radices).rev() {
        if radix == 0 {
            return None;
        }
        *digit = rest % radix;
        rest /= radix;
    }
    (rest == 0).then_some(digits)
}

/// The index of mixed-radix `digits`, most significant first.
pub(crate) fn join_index(digits: &[u64], radices: &[u64]) -> u64 {
    digits
        .iter()
        .zip(radices)
        .fold(0u64, |acc, (&digit, &radix)| {
            acc.saturating_mul(radix).saturating_add(digit)
        })
}

fn join<'a>(parts: impl Iterator<Item = &'a str>) -> PartitionKey {
    PartitionKey::from(parts.collect::<Vec<_>>().join("|"))
}
