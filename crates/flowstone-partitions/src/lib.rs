//! Partition definitions and mappings for FlowStone.
//!
//! A [`PartitionsDef`] says how an asset is sliced: time windows of one cadence
//! in one time zone ([`TimeWindowPartitions`]), a fixed list of names
//! ([`StaticPartitions`]), or the product of those ([`MultiPartitions`]). Each
//! slice has a canonical [`PartitionKey`] and an index; a [`PartitionMapping`]
//! says which upstream partitions a downstream partition reads.
//!
//! Everything here is pure and synchronous. Nothing lists all keys to answer a
//! question: lengths, indices and keys are computed, so a definition with a
//! million hourly keys answers in microseconds. Time is always reasoned about
//! in absolute instants ([`Timestamp`]); local clocks only name windows.
//!
//! The range of a time definition depends on the present, which is always
//! passed in as `now`: the last key is the last window complete at `now`.
//!
//! ```
//! use flowstone_partitions::{PartitionMapping, TimeWindowPartitions, Timestamp};
//!
//! let daily = TimeWindowPartitions::daily("2013-01-01")
//!     .time_zone("America/New_York")
//!     .end("2014-01-01")
//!     .build()?;
//! let hourly = TimeWindowPartitions::hourly("2013-01-01")
//!     .time_zone("America/New_York")
//!     .build()?;
//! let now: Timestamp = "2030-01-01T00:00:00Z".parse()?;
//! assert_eq!(daily.len(now), 365);
//!
//! // The day clocks spring forward reads 23 hours.
//! let day = daily.parse_key("2013-03-10", now)?;
//! let hours = PartitionMapping::TimeWindow { offset: 0 }
//!     .upstream(Some(&daily), Some(&day), Some(&hourly), now)?;
//! assert_eq!(hours.count(), 23);
//!
//! // An hour that repeats needs its offset.
//! assert!(hourly.parse_key("2013-11-03T01:00", now).is_err());
//! assert_eq!(hourly.parse_key("2013-11-03T01:00-05:00", now)?.as_str(), "2013-11-03T01:00-05:00");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod civil;
mod error;
mod key;
mod mapping;
mod multi;
mod static_;
mod time;

use std::ops::Range;

pub use jiff::Timestamp;
pub use jiff::civil::Weekday;
pub use jiff::tz::TimeZone;

pub use crate::error::{MappingError, PartitionKeyError, PartitionsError};
pub use crate::key::{PartitionKey, TimeWindow};
pub use crate::mapping::{MAX_LISTED_KEYS, PartitionMapping, UpstreamPartitions};
pub use crate::multi::MultiPartitions;
pub use crate::static_::StaticPartitions;
pub use crate::time::{TimeWindowBuilder, TimeWindowPartitions};

/// How an asset is partitioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionsDef {
    /// Time windows of one cadence in one zone.
    Time(TimeWindowPartitions),
    /// A fixed list of names.
    Static(StaticPartitions),
    /// The product of two or more time or static dimensions.
    Multi(MultiPartitions),
}

impl PartitionsDef {
    /// How many partitions there are at `now`.
    pub fn len(&self, now: Timestamp) -> u64 {
        match self {
            PartitionsDef::Time(time) => time.len(now),
            PartitionsDef::Static(list) => list.len(),
            PartitionsDef::Multi(multi) => multi.len(now),
        }
    }

    /// Whether there is no partition at `now`.
    pub fn is_empty(&self, now: Timestamp) -> bool {
        self.len(now) == 0
    }

    /// The key at `index`, if it is in range at `now`.
    pub fn key_at(&self, index: u64, now: Timestamp) -> Option<PartitionKey> {
        match self {
            PartitionsDef::Time(time) => time.key_at(index, now),
            PartitionsDef::Static(list) => list.key_at(index),
            PartitionsDef::Multi(multi) => multi.key_at(index, now),
        }
    }

    /// The canonical form of `key`, checked against the range at `now`.
    ///
    /// An hourly key may leave out its offset when the local hour happens once;
    /// the result always carries it.
    ///
    /// # Errors
    ///
    /// A key in the wrong format, an unknown static key, an hourly key that is
    /// ambiguous or does not exist, or a key outside the range at `now`.
    pub fn parse_key(&self, key: &str, now: Timestamp) -> Result<PartitionKey, PartitionKeyError> {
        self.parse_indexed(key, now).map(|(_, key)| key)
    }

    /// The index of `key` at `now`.
    ///
    /// # Errors
    ///
    /// As for [`PartitionsDef::parse_key`].
    pub fn index_of(&self, key: &str, now: Timestamp) -> Result<u64, PartitionKeyError> {
        self.parse_indexed(key, now).map(|(index, _)| index)
    }

    /// The keys with indices in `range` (clipped to the range at `now`), made
    /// one at a time.
    pub fn keys(
        &self,
        range: Range<u64>,
        now: Timestamp,
    ) -> Box<dyn Iterator<Item = PartitionKey> + '_> {
        let end = range.end.min(self.len(now));
        let range = range.start..end;
        match self {
            PartitionsDef::Time(time) => Box::new(time.keys(range, now)),
            PartitionsDef::Static(list) => Box::new(range.filter_map(|i| list.key_at(i))),
            PartitionsDef::Multi(multi) => {
                let radices = multi.radices(now);
                Box::new(range.filter_map(move |i| {
                    let digits = multi::split_index(i, &radices)?;
                    let mut parts = Vec::with_capacity(digits.len());
                    for ((_, def), digit) in multi.dimensions().iter().zip(digits) {
                        parts.push(def.key_unchecked(digit)?);
                    }
                    let text: Vec<&str> = parts.iter().map(PartitionKey::as_str).collect();
                    Some(PartitionKey::from(text.join("|")))
                }))
            }
        }
    }

    /// The index range from key `from` to key `to`, both included.
    ///
    /// # Errors
    ///
    /// Either key invalid at `now`, or `from` after `to`.
    pub fn range(
        &self,
        from: &str,
        to: &str,
        now: Timestamp,
    ) -> Result<Range<u64>, PartitionKeyError> {
        let first = self.index_of(from, now)?;
        let last = self.index_of(to, now)?;
        if first > last {
            return Err(PartitionKeyError::ReversedRange {
                from: from.to_owned(),
                to: to.to_owned(),
            });
        }
        Ok(first..last + 1)
    }

    /// The window a key covers: for time partitions the key's window, for
    /// multi partitions with a time dimension that dimension's window, else
    /// `None`. The key is not checked against any range.
    pub fn time_window(&self, key: &PartitionKey) -> Option<TimeWindow> {
        match self {
            PartitionsDef::Time(time) => time.window_of_key(key.as_str()),
            PartitionsDef::Static(_) => None,
            PartitionsDef::Multi(multi) => multi.time_window(key),
        }
    }

    /// "daily in America/New_York from 2013-01-01 to 2013-12-31",
    /// "static: a, b, c", "date × carrier".
    pub fn describe(&self) -> String {
        match self {
            PartitionsDef::Time(time) => time.describe(),
            PartitionsDef::Static(list) => format!("static: {}", list.listing()),
            PartitionsDef::Multi(multi) => multi.describe(),
        }
    }

    /// The first key, whether or not it is in range at `now`; for messages.
    pub fn example_key(&self, now: Timestamp) -> String {
        match self {
            PartitionsDef::Time(time) => time.first_key(),
            PartitionsDef::Static(list) => list
                .keys()
                .first()
                .map(|k| k.as_str().to_owned())
                .unwrap_or_default(),
            PartitionsDef::Multi(multi) => multi.example_key(now),
        }
    }

    /// The dimension names of multi partitions, in order; empty otherwise.
    pub fn dimensions(&self) -> Vec<&str> {
        match self {
            PartitionsDef::Multi(multi) => multi
                .dimensions()
                .iter()
                .map(|(name, _)| name.as_str())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The part of a multi `key` that belongs to dimension `dim`.
    pub fn dimension_key<'k>(&self, key: &'k PartitionKey, dim: &str) -> Option<&'k str> {
        match self {
            PartitionsDef::Multi(multi) => multi.dimension_key(key, dim),
            _ => None,
        }
    }

    /// "hourly", "daily", "weekly", "monthly", "cron", "static" or "multi".
    pub fn kind_name(&self) -> &'static str {
        match self {
            PartitionsDef::Time(time) => time.kind_name(),
            PartitionsDef::Static(_) => "static",
            PartitionsDef::Multi(_) => "multi",
        }
    }

    /// The time definition, if this is one.
    pub fn as_time(&self) -> Option<&TimeWindowPartitions> {
        match self {
            PartitionsDef::Time(time) => Some(time),
            _ => None,
        }
    }

    /// The static definition, if this is one.
    pub fn as_static(&self) -> Option<&StaticPartitions> {
        match self {
            PartitionsDef::Static(list) => Some(list),
            _ => None,
        }
    }

    /// The multi definition, if this is one.
    pub fn as_multi(&self) -> Option<&MultiPartitions> {
        match self {
            PartitionsDef::Multi(multi) => Some(multi),
            _ => None,
        }
    }

    pub(crate) fn parse_indexed(
        &self,
        key: &str,
        now: Timestamp,
    ) -> Result<(u64, PartitionKey), PartitionKeyError> {
        match self {
            PartitionsDef::Time(time) => time.parse(key, now),
            PartitionsDef::Static(list) => list.parse(key),
            PartitionsDef::Multi(multi) => multi.parse(key, now),
        }
    }

    /// The key at `index` without checking the range (for multi iteration,
    /// whose digits are in range by construction).
    fn key_unchecked(&self, index: u64) -> Option<PartitionKey> {
        match self {
            PartitionsDef::Time(time) => time.key_unchecked(index),
            PartitionsDef::Static(list) => list.key_at(index),
            PartitionsDef::Multi(_) => None,
        }
    }
}
