//! Daily, weekly and monthly grids: windows named by a civil date.
//!
//! Window `i` runs from the first instant whose local time reaches its first
//! day's midnight to the first instant that reaches the next one's, so a day is
//! 23, 24 or 25 hours long on DST days and windows always tile the time line.
//! The index of a window is a difference of day or month numbers: no calendar
//! is walked.

use jiff::Timestamp;
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;

use crate::civil::{
    date_from_day_number, date_from_month_number, day_number, first_instant_at_or_after,
    format_date, format_month, month_number, parse_date, parse_month,
};

/// How far one window reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Day,
    Week(Weekday),
    Month,
}

// FIXME(skipped and folded midnights): a zone that skips a whole local day
// (Pacific/Apia skipped 2011-12-30) gets an empty window for it, and one whose
// clock goes back across midnight gives the repeated stretch to the next day.
// Windows still tile the time line; skipping empty windows would need an index
// correction per such transition, as the hourly grid has.
/// Windows counted from the one whose first day has number `base` (a day number
/// for days and weeks, a month number for months).
#[derive(Debug, Clone)]
pub(crate) struct CalendarGrid {
    pub(crate) tz: TimeZone,
    pub(crate) unit: Unit,
    pub(crate) base: i64,
}

impl CalendarGrid {
    /// The first day of window `index`.
    pub(crate) fn first_day(&self, index: i64) -> Option<Date> {
        match self.unit {
            Unit::Day => date_from_day_number(self.base.checked_add(index)?),
            Unit::Week(_) => date_from_day_number(self.base.checked_add(index.checked_mul(7)?)?),
            Unit::Month => date_from_month_number(self.base.checked_add(index)?),
        }
    }

    pub(crate) fn window_start(&self, index: i64) -> Option<Timestamp> {
        let day = self.first_day(index)?;
        first_instant_at_or_after(&self.tz, day.to_datetime(Time::midnight()))
    }

    pub(crate) fn index_containing(&self, t: Timestamp) -> i64 {
        let date = self.tz.to_datetime(t).date();
        let mut index = match self.unit {
            Unit::Day => day_number(date) - self.base,
            Unit::Week(_) => (day_number(date) - self.base).div_euclid(7),
            Unit::Month => month_number(date) - self.base,
        };

        // The local date names the window except where the clock goes back
        // across midnight; a couple of steps settle those.
        for _ in 0..3 {
            if self.window_start(index + 1).is_some_and(|next| next <= t) {
                index += 1;
            } else if self.window_start(index).is_some_and(|start| start > t) {
                index -= 1;
            } else {
                break;
            }
        }
        index
    }

    pub(crate) fn key(&self, index: i64) -> Option<String> {
        let day = self.first_day(index)?;
        Some(match self.unit {
            Unit::Day | Unit::Week(_) => format_date(day),
            Unit::Month => format_month(day),
        })
    }

    /// The index that `key` names, or why it names none.
    pub(crate) fn parse(&self, key: &str) -> Result<i64, String> {
        match self.unit {
            Unit::Day => {
                let date = parse_date(key).ok_or_else(|| String::from("not a date"))?;
                Ok(day_number(date) - self.base)
            }
            Unit::Week(weekday) => {
                let date = parse_date(key).ok_or_else(|| String::from("not a date"))?;
                let offset = day_number(date) - self.base;
                if offset.rem_euclid(7) == 0 {
                    return Ok(offset / 7);
                }
                let week = self.key(offset.div_euclid(7)).unwrap_or_default();
                Err(format!(
                    "{key} is a {}, but weeks start on {}; its week is {week}",
                    weekday_name(date.weekday()),
                    weekday_name(weekday),
                ))
            }
            Unit::Month => {
                let month = parse_month(key).ok_or_else(|| String::from("not a month"))?;
                Ok(month_number(month) - self.base)
            }
        }
    }
}

/// `monday` .. `sunday`.
pub(crate) fn weekday_name(weekday: Weekday) -> &'static str {
    match weekday {
        Weekday::Monday => "monday",
        Weekday::Tuesday => "tuesday",
        Weekday::Wednesday => "wednesday",
        Weekday::Thursday => "thursday",
        Weekday::Friday => "friday",
        Weekday::Saturday => "saturday",
        Weekday::Sunday => "sunday",
    }
}
