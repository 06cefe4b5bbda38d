//! Partition mappings: which upstream partitions one downstream partition
//! reads, and the inverse, which downstream partitions one upstream partition
//! feeds.
//!
//! `upstream` and `downstream` are exact inverses: downstream partition `d`
//! reads upstream partition `u` if and only if `d` is among the partitions that
//! `u` feeds. Time windows are compared in absolute time, so a downstream day
//! reads the 23, 24 or 25 hours that make up that day in its zone. Keys that
//! fall outside the other side's range at `now` are dropped, never invented.

use std::collections::BTreeMap;
use std::ops::Range;

use jiff::Timestamp;

use crate::error::{MappingError, PartitionKeyError};
use crate::key::PartitionKey;
use crate::multi::MultiPartitions;
use crate::{PartitionsDef, TimeWindowPartitions};

/// Results of at most this many keys are listed as [`UpstreamPartitions::Keys`];
/// larger contiguous results are an index [`UpstreamPartitions::Range`].
pub const MAX_LISTED_KEYS: u64 = 100;

/// How a downstream partition depends on upstream partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionMapping {
    /// The same key on both sides (both sides have the same definition).
    Identity,
    /// The downstream window moved by `offset` downstream windows, then every
    /// upstream window sharing an instant with it. `offset: -1` reads the
    /// previous window ("yesterday").
    TimeWindow { offset: i64 },
    /// Every upstream partition.
    All,
    /// One side is multi: its `name` dimension matches the other side's key.
    Dimension { name: String },
    /// Downstream static key to upstream static keys.
    Static(BTreeMap<String, Vec<String>>),
}

/// The partitions on the other side of a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamPartitions {
    /// The other side is not partitioned: its single value.
    Unpartitioned,
    /// These keys, in index order.
    Keys(Vec<PartitionKey>),
    /// This index range of the other side's definition.
    Range(Range<u64>),
}

impl UpstreamPartitions {
    /// How many partitions this names; 1 for `Unpartitioned`.
    pub fn count(&self) -> u64 {
        match self {
            UpstreamPartitions::Unpartitioned => 1,
            UpstreamPartitions::Keys(keys) => keys.len() as u64,
            UpstreamPartitions::Range(range) => range.end.saturating_sub(range.start),
        }
    }

    /// Whether this names no partition at all.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The keys this names, read from `def` (the side they belong to); empty
    /// for `Unpartitioned`.
    pub fn keys<'a>(
        &'a self,
        def: Option<&'a PartitionsDef>,
        now: Timestamp,
    ) -> Box<dyn Iterator<Item = PartitionKey> + 'a> {
        match (self, def) {
            (UpstreamPartitions::Keys(keys), _) => Box::new(keys.iter().cloned()),
            (UpstreamPartitions::Range(range), Some(def)) => def.keys(range.clone(), now),
            _ => Box::new(std::iter::empty()),
        }
    }
}

impl PartitionMapping {
    /// The mapping to use when none is given.
    ///
    /// Equal definitions, or an unpartitioned upstream: identity. Two time
    /// definitions: `TimeWindow { offset: 0 }`. A multi side with a dimension
    /// equal to the other side: that dimension. Otherwise all.
    pub fn default_for(
        down: Option<&PartitionsDef>,
        up: Option<&PartitionsDef>,
    ) -> PartitionMapping {
        let (down, up) = match (down, up) {
            (_, None) => return PartitionMapping::Identity,
            (None, Some(_)) => return PartitionMapping::All,
            (Some(down), Some(up)) => (down, up),
        };
        if down == up {
            return PartitionMapping::Identity;
        }
        if let (PartitionsDef::Time(_), PartitionsDef::Time(_)) = (down, up) {
            return PartitionMapping::TimeWindow { offset: 0 };
        }
        let matching = |multi: &MultiPartitions, other: &PartitionsDef| {
            multi
                .dimensions()
                .iter()
                .find(|(_, def)| def == other)
                .map(|(name, _)| name.clone())
        };
        let name = match (down, up) {
            (PartitionsDef::Multi(multi), other) | (other, PartitionsDef::Multi(multi)) => {
                matching(multi, other)
            }
            _ => None,
        };
        match name {
            Some(name) => PartitionMapping::Dimension { name },
            None => PartitionMapping::All,
        }
    }

    /// Checks that the mapping can join `down` and `up`.
    ///
    /// # Errors
    ///
    /// Identity between different definitions, a time window mapping with a
    /// side that is not time partitioned, a dimension that is missing or does
    /// not match the other side, a static mapping naming unknown keys, or any
    /// mapping but identity and all with an unpartitioned upstream. The error
    /// suggests the mapping that fits.
    pub fn validate(
        &self,
        down: Option<&PartitionsDef>,
        up: Option<&PartitionsDef>,
    ) -> Result<(), MappingError> {
        let does_not_fit = |reason: String| MappingError::DoesNotFit {
            mapping: self.describe(),
            reason,
            suggestion: PartitionMapping::default_for(down, up).describe(),
        };
        let sides = || format!("downstream is {} and upstream is {}", side(down), side(up));

        match self {
            PartitionMapping::All => Ok(()),
            PartitionMapping::Identity => match (down, up) {
                (_, None) => Ok(()),
                (Some(d), Some(u)) if d == u => Ok(()),
                _ => Err(does_not_fit(sides())),
            },
            PartitionMapping::TimeWindow { .. } => match (down, up) {
                (Some(PartitionsDef::Time(_)), Some(PartitionsDef::Time(_))) => Ok(()),
                _ => Err(does_not_fit(format!(
                    "it needs time partitions on both sides; {}",
                    sides()
                ))),
            },
            PartitionMapping::Dimension { name } => {
                let (multi, other) = match (down, up) {
                    (Some(PartitionsDef::Multi(m)), Some(other)) => (m, other),
                    (Some(other), Some(PartitionsDef::Multi(m))) => (m, other),
                    _ => {
                        return Err(does_not_fit(format!(
                            "it needs one multi side; {}",
                            sides()
                        )));
                    }
                };
                let Some((_, def)) = multi.dimension(name) else {
                    return Err(MappingError::UnknownDimension {
                        name: name.clone(),
                        available: multi.describe().replace(" × ", ", "),
                    });
                };
                if def != other {
                    return Err(does_not_fit(format!(
                        "dimension {name:?} is {} but the other side is {}",
                        def.describe(),
                        other.describe()
                    )));
                }
                Ok(())
            }
            PartitionMapping::Static(map) => {
                let (Some(PartitionsDef::Static(d)), Some(PartitionsDef::Static(u))) = (down, up)
                else {
                    return Err(does_not_fit(format!(
                        "it needs static partitions on both sides; {}",
                        sides()
                    )));
                };
                for (down_key, up_keys) in map {
                    if d.parse(down_key).is_err() {
                        return Err(unknown_static("downstream", down_key, d.listing()));
                    }
                    if let Some(up_key) = up_keys.iter().find(|k| u.parse(k).is_err()) {
                        return Err(unknown_static("upstream", up_key, u.listing()));
                    }
                }
                Ok(())
            }
        }
    }

    /// The upstream partitions that downstream partition `key` reads at `now`.
    ///
    /// `key` is `None` exactly when `down` is. Upstream keys outside the
    /// upstream range are dropped, so the day before the first day reads
    /// nothing.
    ///
    /// # Errors
    ///
    /// A key that is missing or invalid downstream, or a mapping that does not
    /// fit the two sides (see [`PartitionMapping::validate`]).
    pub fn upstream(
        &self,
        down: Option<&PartitionsDef>,
        key: Option<&PartitionKey>,
        up: Option<&PartitionsDef>,
        now: Timestamp,
    ) -> Result<UpstreamPartitions, MappingError> {
        let Some(up_def) = up else {
            return Ok(UpstreamPartitions::Unpartitioned);
        };
        self.validate(down, up)?;
        let Some((down_def, index, key)) = resolve("downstream", down, key, now)? else {
            // An unpartitioned downstream reads all of a partitioned upstream.
            return Ok(UpstreamPartitions::Range(0..up_def.len(now)));
        };

        match self {
            PartitionMapping::All => Ok(UpstreamPartitions::Range(0..up_def.len(now))),
            PartitionMapping::Identity => Ok(keys_in(up_def, [key.as_str()], now)?),
            PartitionMapping::TimeWindow { offset } => {
                let (d, u) = time_pair(down_def, up_def)?;
                let shifted = i64::try_from(index)
                    .unwrap_or(i64::MAX)
                    .saturating_add(*offset);
                let Some(window) = d.window_signed(shifted) else {
                    return Ok(UpstreamPartitions::Keys(Vec::new()));
                };
                Ok(shape(up_def, u.indices_overlapping(window, now), now))
            }
            PartitionMapping::Dimension { name } => {
                dimension_side(name, down_def, &key, up_def, now)
            }
            PartitionMapping::Static(map) => {
                let listed = map.get(key.as_str()).map(Vec::as_slice).unwrap_or_default();
                Ok(keys_in(up_def, listed.iter().map(String::as_str), now)?)
            }
        }
    }

    /// The downstream partitions that read upstream partition `up_key` at
    /// `now`: the inverse of [`PartitionMapping::upstream`].
    ///
    /// # Errors
    ///
    /// As for [`PartitionMapping::upstream`], with the key checked upstream.
    pub fn downstream(
        &self,
        down: Option<&PartitionsDef>,
        up: Option<&PartitionsDef>,
        up_key: Option<&PartitionKey>,
        now: Timestamp,
    ) -> Result<UpstreamPartitions, MappingError> {
        let Some(down_def) = down else {
            return Ok(UpstreamPartitions::Unpartitioned);
        };
        self.validate(down, up)?;
        let Some((up_def, up_index, up_key)) = resolve("upstream", up, up_key, now)? else {
            // Every downstream partition reads an unpartitioned upstream.
            return Ok(UpstreamPartitions::Range(0..down_def.len(now)));
        };

        match self {
            PartitionMapping::All => Ok(UpstreamPartitions::Range(0..down_def.len(now))),
            PartitionMapping::Identity => Ok(keys_in(down_def, [up_key.as_str()], now)?),
            PartitionMapping::TimeWindow { offset } => {
                let (d, u) = time_pair(down_def, up_def)?;
                let window = u.window_at(up_index);
                let Some((first, end)) = d.signed_overlapping(window) else {
                    return Ok(UpstreamPartitions::Keys(Vec::new()));
                };
                // Downstream `i` reads the windows overlapping its window `i + offset`.
                let len = d.len(now);
                let clip = |i: i64| {
                    u64::try_from(i.saturating_sub(*offset))
                        .unwrap_or(0)
                        .min(len)
                };
                let (first, end) = (clip(first), clip(end));
                Ok(shape(down_def, first..end.max(first), now))
            }
            PartitionMapping::Dimension { name } => {
                dimension_side(name, up_def, &up_key, down_def, now)
            }
            PartitionMapping::Static(map) => {
                let readers = map
                    .iter()
                    .filter(|(_, ups)| ups.iter().any(|u| u == up_key.as_str()))
                    .map(|(down_key, _)| down_key.as_str());
                Ok(keys_in(down_def, readers, now)?)
            }
        }
    }

    /// "identity", "time window (offset -1)", "all", "dimension \"date\"",
    /// "static (3 keys)".
    pub fn describe(&self) -> String {
        match self {
            PartitionMapping::Identity => String::from("identity"),
            PartitionMapping::TimeWindow { offset: 0 } => String::from("time window"),
            PartitionMapping::TimeWindow { offset } => format!("time window (offset {offset:+})"),
            PartitionMapping::All => String::from("all"),
            PartitionMapping::Dimension { name } => format!("dimension {name:?}"),
            PartitionMapping::Static(map) => format!("static ({} keys)", map.len()),
        }
    }
}

/// The definition, index and canonical key on a partitioned side; `None` for
/// an unpartitioned one.
fn resolve<'d>(
    side: &'static str,
    def: Option<&'d PartitionsDef>,
    key: Option<&PartitionKey>,
    now: Timestamp,
) -> Result<Option<(&'d PartitionsDef, u64, PartitionKey)>, MappingError> {
    let Some(def) = def else {
        return Ok(None);
    };
    let Some(key) = key else {
        return Err(MappingError::MissingKey {
            side,
            def: def.describe(),
        });
    };
    let (index, key) = def.parse_indexed(key.as_str(), now)?;
    Ok(Some((def, index, key)))
}

fn time_pair<'d>(
    down: &'d PartitionsDef,
    up: &'d PartitionsDef,
) -> Result<(&'d TimeWindowPartitions, &'d TimeWindowPartitions), MappingError> {
    match (down, up) {
        (PartitionsDef::Time(d), PartitionsDef::Time(u)) => Ok((d, u)),
        _ => Err(MappingError::DoesNotFit {
            mapping: String::from("time window"),
            reason: format!(
                "downstream is {} and upstream is {}",
                down.describe(),
                up.describe()
            ),
            suggestion: PartitionMapping::default_for(Some(down), Some(up)).describe(),
        }),
    }
}

/// The keys of `def` among `keys`, canonical and in index order; keys outside
/// the range at `now` are dropped.
fn keys_in<'k>(
    def: &PartitionsDef,
    keys: impl IntoIterator<Item = &'k str>,
    now: Timestamp,
) -> Result<UpstreamPartitions, PartitionKeyError> {
    let mut found = Vec::new();
    for key in keys {
        match def.parse_indexed(key, now) {
            Ok(pair) => found.push(pair),
            Err(PartitionKeyError::OutOfRange { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    found.sort();
    found.dedup();
    Ok(UpstreamPartitions::Keys(
        found.into_iter().map(|(_, key)| key).collect(),
    ))
}

/// Lists a small index range as keys, keeps a large one as a range.
fn shape(def: &PartitionsDef, range: Range<u64>, now: Timestamp) -> UpstreamPartitions {
    if range.end.saturating_sub(range.start) <= MAX_LISTED_KEYS {
        UpstreamPartitions::Keys(def.keys(range, now).collect())
    } else {
        UpstreamPartitions::Range(range)
    }
}

/// Across a dimension mapping, from `key` of definition `from` to the other
/// definition `to`; whichever of the two is multi.
fn dimension_side(
    name: &str,
    from: &PartitionsDef,
    key: &PartitionKey,
    to: &PartitionsDef,
    now: Timestamp,
) -> Result<UpstreamPartitions, MappingError> {
    // Multi to single: the key's part for the dimension.
    if let PartitionsDef::Multi(multi) = from {
        let part = multi.dimension_key(key, name).unwrap_or_default();
        return Ok(keys_in(to, [part], now)?);
    }

    // Single to multi: every multi key whose part for the dimension is `key`.
    let PartitionsDef::Multi(multi) = to else {
        return Ok(UpstreamPartitions::Keys(Vec::new()));
    };
    let Some((at, dim_def)) = multi.dimension(name) else {
        return Ok(UpstreamPartitions::Keys(Vec::new()));
    };
    let digit = match dim_def.parse_indexed(key.as_str(), now) {
        Ok((digit, _)) => digit,
        Err(PartitionKeyError::OutOfRange { .. }) => {
            return Ok(UpstreamPartitions::Keys(Vec::new()));
        }
        Err(e) => return Err(e.into()),
    };

    // Mixed radix: the digit at `at` is fixed, so the matches are one block of
    // `inner` consecutive indices for each value of the digits before it.
    let radices = multi.radices(now);
    let outer: u64 = radices[..at].iter().product();
    let inner: u64 = radices[at + 1..].iter().product();
    let radix = radices[at];
    if outer == 1 {
        let first = digit.saturating_mul(inner);
        return Ok(shape(to, first..first.saturating_add(inner), now));
    }
    let mut keys = Vec::new();
    for prefix in 0..outer {
        let first = prefix
            .saturating_mul(radix)
            .saturating_add(digit)
            .saturating_mul(inner);
        keys.extend(to.keys(first..first.saturating_add(inner), now));
    }
    Ok(UpstreamPartitions::Keys(keys))
}

fn side(def: Option<&PartitionsDef>) -> String {
    match def {
        Some(def) => def.describe(),
        None => String::from("unpartitioned"),
    }
}

fn unknown_static(side: &'static str, key: &str, valid: String) -> MappingError {
    MappingError::UnknownStaticKey {
        side,
        key: key.to_owned(),
        valid,
    }
}
