//! The two error kinds of the example.
//!
//! [`DataError`] is about the input files: one that cannot be read, or a row that
//! does not parse. Every parse error names the file, the line (1-based, the header
//! being line 1) and the column, so the bad value can be found with an editor.
//! [`ReportError`] is about a caller passing reports that do not belong together,
//! which is a wiring mistake rather than bad data.
//!
//! Both are `Clone`: a source that failed to load keeps its error and hands a copy
//! to every later caller.

use std::path::PathBuf;
use std::sync::Arc;

use jiff::civil::Date;

/// Reading or parsing one of the data files failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// The zip archive is damaged or lacks the expected entry.
    #[error("cannot read {entry} from zip archive {}: {source}", path.display())]
    Zip {
        path: PathBuf,
        entry: &'static str,
        #[source]
        source: Arc<zip::result::ZipError>,
    },

    /// The header line is not the one this parser was written for.
    #[error("{file}: line 1: unexpected header {found:?}, expected {expected:?}")]
    Header {
        file: String,
        found: String,
        expected: String,
    },

    /// The CSV structure itself is broken (wrong number of fields, invalid UTF-8).
    #[error("{file}: line {line}: {message}")]
    Csv {
        file: String,
        line: u64,
        message: String,
    },

    /// One field does not hold a value of the column's type.
    #[error(
        "{file}: line {line}, column {column} ({name}): invalid value {value:?}, expected {expected}"
    )]
    Field {
        file: String,
        line: u64,
        /// 1-based position of the column.
        column: usize,
        name: &'static str,
        value: String,
        expected: &'static str,
    },

    /// The fields parse one by one but contradict each other.
    #[error("{file}: line {line}, column {column} ({name}): {message}")]
    Inconsistent {
        file: String,
        line: u64,
        column: usize,
        name: &'static str,
        message: String,
    },
}

/// Reports handed to an aggregation do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A weekly report must start on a Monday.
    #[error("week start {week_start} is a {weekday:?}, not a Monday")]
    WeekStart {
        week_start: Date,
        weekday: jiff::civil::Weekday,
    },

    /// A daily report lies outside the week being aggregated.
    #[error("daily report of {date} is outside the week starting {week_start}")]
    OutsideWeek { date: Date, week_start: Date },

    /// The same day was passed twice, which would count its flights twice.
    #[error("daily report of {date} was given more than once")]
    DuplicateDay { date: Date },
}
