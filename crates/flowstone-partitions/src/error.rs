//! Errors: one enum for building a definition, one for reading a key, and one
//! for mappings.
//!
//! Every message is lowercase, names the value that failed and says what would
//! have been accepted. The variants are meant to be matched; the text is for
//! people.

use thiserror::Error;

/// A partition definition could not be built from its settings.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PartitionsError {
    /// The time zone name is not in the time zone database.
    #[error(
        "unknown time zone {name:?}: {reason}; expected an IANA name like \"America/New_York\""
    )]
    BadTimeZone { name: String, reason: String },

    /// The start is not a date or date-time, or no window starts after it.
    #[error("invalid start {value:?}: {reason}")]
    BadStart { value: String, reason: String },

    /// The end is not a date or date-time.
    #[error("invalid end {value:?}: {reason}")]
    BadEnd { value: String, reason: String },

    /// The end leaves no whole window after the start.
    #[error("end {end:?} leaves no whole window after the first one, {start:?}")]
    EndBeforeStart { start: String, end: String },

    /// The cron expression was rejected by the cron parser, or never fires.
    #[error("invalid cron expression {expr:?}: {reason}")]
    BadCron { expr: String, reason: String },

    /// A setting was given that the cadence does not use.
    #[error("{setting} applies only to {applies_to} partitions, not {kind}")]
    UnusedSetting {
        setting: &'static str,
        applies_to: &'static str,
        kind: &'static str,
    },

    /// A static definition with no key.
    #[error("static partitions need at least one key")]
    EmptyStatic,

    /// A static key given twice.
    #[error("duplicate static partition key {0:?}")]
    DuplicateKey(String),

    /// A static key that could not be used as a partition key.
    #[error("invalid static partition key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    /// Fewer than two dimensions in a multi definition.
    #[error("multi partitions need at least 2 dimensions, got {0}")]
    TooFewDimensions(usize),

    /// A dimension name given twice.
    #[error("duplicate dimension name {0:?}")]
    DuplicateDimension(String),

    /// A dimension name that is empty or holds the key separator.
    #[error("invalid dimension name {name:?}: {reason}")]
    InvalidDimension { name: String, reason: &'static str },

    /// A multi definition used as a dimension of another.
    #[error("dimension {0:?} is itself multi; multi partitions cannot nest")]
    NestedMulti(String),

    /// More than one time dimension in a multi definition.
    #[error("multi partitions allow at most one time dimension, got {first:?} and {second:?}")]
    TwoTimeDimensions { first: String, second: String },
}

/// A partition key that a definition does not accept.
///
/// `def` is the definition as people read it ("daily partitions in UTC"),
/// `first` and `last` bound the valid keys at the `now` the check was made with
/// (`last` is `None` when no partition is complete yet).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PartitionKeyError {
    /// The key is not in the definition's format.
    /// The example of a valid key is `first`.
    #[error(
        "invalid partition key {key:?} for {def}: {reason}; expected a key like {first:?}, {}",
        range_from(.first, .last)
    )]
    Invalid {
        key: String,
        def: String,
        reason: String,
        first: String,
        last: Option<String>,
    },

    /// The key is well formed but lies before the first or after the last key.
    #[error("partition key {key:?} is outside {def} ({})", range_span(.first, .last))]
    OutOfRange {
        key: String,
        def: String,
        first: String,
        last: Option<String>,
    },

    /// A static key that is not in the list.
    #[error("unknown partition key {key:?} for static partitions; valid keys: {valid}")]
    Unknown { key: String, valid: String },

    /// An hourly key without offset names a local hour that happens twice.
    #[error("ambiguous partition key {key:?} in {zone}: the hour repeats; use {}", quoted_or(.candidates))]
    Ambiguous {
        key: String,
        zone: String,
        candidates: Vec<String>,
    },

    /// A local time that the zone skips (clocks moved forward over it), or an
    /// offset that is not in force at that local time.
    #[error("partition key {key:?} does not exist in {zone}: {reason}")]
    Nonexistent {
        key: String,
        zone: String,
        reason: String,
    },

    /// A multi key whose part for one dimension is wrong.
    #[error("invalid partition key {key:?} in dimension {dimension:?}: {source}")]
    InDimension {
        key: String,
        dimension: String,
        #[source]
        source: Box<PartitionKeyError>,
    },

    /// A multi key with the wrong number of parts.
    #[error(
        "invalid partition key {key:?} for {def}: expected {expected} parts separated by '|', got {got}; expected a key like {example:?}"
    )]
    WrongParts {
        key: String,
        def: String,
        expected: usize,
        got: usize,
        example: String,
    },

    /// A range whose first key comes after its last.
    #[error("partition range is reversed: {from:?} comes after {to:?}")]
    ReversedRange { from: String, to: String },
}

/// A partition mapping that does not fit the two definitions it joins, or a
/// key it was asked about.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MappingError {
    /// The mapping cannot join these two sides.
    #[error("{mapping} mapping does not fit: {reason}; use {suggestion} instead")]
    DoesNotFit {
        mapping: String,
        reason: String,
        suggestion: String,
    },

    /// A dimension mapping names a dimension that the multi side lacks.
    #[error("dimension {name:?} not found; the multi side has: {available}")]
    UnknownDimension { name: String, available: String },

    /// A static mapping names a key that its side does not have.
    #[error(
        "static mapping names {side} key {key:?} which is not in {side} partitions; valid keys: {valid}"
    )]
    UnknownStaticKey {
        side: &'static str,
        key: String,
        valid: String,
    },

    /// A partitioned side was asked about without a key.
    #[error("{side} is partitioned ({def}) but no partition key was given")]
    MissingKey { side: &'static str, def: String },

    /// The key given is not valid for its side.
    #[error(transparent)]
    Key(#[from] PartitionKeyError),
}

fn range_from(first: &str, last: &Option<String>) -> String {
    match last {
        Some(last) => format!("from {first} to {last}"),
        None => format!("none complete yet (the first will be {first})"),
    }
}

fn range_span(first: &str, last: &Option<String>) -> String {
    match last {
        Some(last) => format!("{first} to {last}"),
        None => format!("none complete yet; the first will be {first}"),
    }
}

fn quoted_or(candidates: &[String]) -> String {
    let quoted: Vec<String> = candidates.iter().map(|c| format!("{c:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::from("a key with an offset"),
    }
}

/// Lists up to ten names, then says how many more there are.
pub(crate) fn list_some<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    const SHOWN: usize = 10;

    let total = names.len();
    let mut text = names.take(SHOWN).collect::<Vec<_>>().join(", ");
    if total > SHOWN {
        text.push_str(&format!(", and {} more", total - SHOWN));
    }
    text
}
