//! The hourly grid: one window per (local hour, UTC offset) pair.
//!
//! A window boundary is any instant where the local clock shows a whole hour,
//! or where the zone's offset changes. Between two offset changes the local
//! clock runs evenly, so counting windows is arithmetic on hour numbers plus
//! one correction per offset change: every operation here walks only the offset
//! changes between the start and the instant asked about.

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};

use crate::civil::{format_local, next_offset_change, previous_offset_change};

const HOUR: i64 = 3600;

/// Windows counted from `start`, which is itself a boundary.
#[derive(Debug, Clone)]
pub(crate) struct HourGrid {
    pub(crate) tz: TimeZone,
    pub(crate) start: Timestamp,
}

impl HourGrid {
    /// The index of the window holding `t`, negative before the start.
    pub(crate) fn index_containing(&self, t: Timestamp) -> i64 {
        let (s, t_sec) = (self.start.as_second(), floor_second(t));
        let (lo, hi, sign) = if t_sec >= s {
            (s, t_sec, 1)
        } else {
            (t_sec, s, -1)
        };
        let mut index = self.hour_number(t_sec) - self.hour_number(s);

        // Each offset change is one boundary, but it also moves the hour number
        // by however far the clock jumped; swap that jump for the one boundary.
        let mut cursor = second(lo);
        while let Some(at) = cursor.and_then(|c| next_offset_change(&self.tz, c)) {
            let a = at.as_second();
            if a > hi {
                break;
            }
            let jump = self.hour_number(a) - self.hour_number(a - 1);
            index += sign * (1 - jump);
            cursor = Some(at);
        }
        index
    }

    /// The start of window `index`, or `None` outside jiff's range.
    pub(crate) fn window_start(&self, index: i64) -> Option<Timestamp> {
        if index >= 0 {
            self.start_forward(index)
        } else {
            self.start_backward(index)
        }
    }

    fn start_forward(&self, index: i64) -> Option<Timestamp> {
        let mut segment = self.start;
        let mut segment_index = 0i64;
        loop {
            // Boundaries in this constant-offset stretch: its first instant,
            // then every whole local hour before the next offset change.
            let s = segment.as_second();
            let offset = self.offset_seconds(s);
            let first_hour = (s + offset).div_euclid(HOUR);
            let next = next_offset_change(&self.tz, segment);
            let marks = match next {
                Some(at) => (at.as_second() - 1 + offset).div_euclid(HOUR) - first_hour,
                None => i64::MAX,
            };
            let wanted = index - segment_index;
            if wanted == 0 {
                return Some(segment);
            }
            if wanted <= marks {
                let at = first_hour.checked_add(wanted)?.checked_mul(HOUR)? - offset;
                return second(at);
            }
            segment_index += marks + 1;
            segment = next?;
        }
    }

    fn start_backward(&self, index: i64) -> Option<Timestamp> {
        let mut segment_end = self.start;
        let mut end_index = 0i64;
        loop {
            // Walk the stretch that ends at `segment_end` from its last whole
            // hour back to the offset change that opened it.
            let e = segment_end.as_second() - 1;
            let offset = self.offset_seconds(e);
            let last_hour = (e + offset).div_euclid(HOUR);
            let previous = previous_offset_change(&self.tz, segment_end);
            let marks = match previous {
                Some(at) => last_hour - (at.as_second() + offset).div_euclid(HOUR),
                None => i64::MAX,
            };
            let back = end_index - index;
            if back <= marks {
                let at = last_hour.checked_sub(back - 1)?.checked_mul(HOUR)? - offset;
                return second(at);
            }
            if back == marks + 1 {
                return previous;
            }
            end_index -= marks + 1;
            segment_end = previous?;
        }
    }

    /// The boundary after boundary `at`: the next whole local hour or the next
    /// offset change, whichever comes first.
    pub(crate) fn next_boundary(&self, at: Timestamp) -> Option<Timestamp> {
        let s = at.as_second();
        let offset = self.offset_seconds(s);
        let next_hour = second(((s + offset).div_euclid(HOUR) + 1).checked_mul(HOUR)? - offset)?;
        match next_offset_change(&self.tz, at) {
            Some(change) if change < next_hour => Some(change),
            _ => Some(next_hour),
        }
    }

    /// The canonical key of the window starting at `start`.
    pub(crate) fn key_at_start(&self, start: Timestamp) -> String {
        let offset = self.tz.to_offset(start);
        let local = offset.to_datetime(start);
        let hour = local.date().at(local.hour(), 0, 0, 0);
        format_local(hour, offset)
    }

    /// Every key whose local hour is `hour`: none when the zone skips it, two
    /// (or more) when the clock goes back over it. Sorted by time.
    pub(crate) fn keys_for_local_hour(&self, hour: DateTime) -> Vec<(Timestamp, Offset)> {
        let Ok(as_utc) = Offset::UTC.to_timestamp(hour) else {
            return Vec::new();
        };

        // Any offset a key could carry is in force within a day of the hour read
        // as UTC (offsets stay within ±26 hours).
        let reach = SignedDuration::from_hours(26);
        let lo = as_utc.checked_sub(reach).unwrap_or(Timestamp::MIN);
        let hi = as_utc.checked_add(reach).unwrap_or(Timestamp::MAX);
        let mut offsets = vec![self.tz.to_offset(lo)];
        let mut cursor = lo;
        while let Some(at) = next_offset_change(&self.tz, cursor) {
            if at > hi {
                break;
            }
            offsets.push(self.tz.to_offset(at));
            cursor = at;
        }
        offsets.sort_by_key(|o| o.seconds());
        offsets.dedup();

        // A key exists for an offset when some instant of that local hour has
        // that offset; its window starts at the first such instant.
        let mut keys: Vec<(Timestamp, Offset)> = offsets
            .into_iter()
            .filter_map(|offset| Some((self.first_with_offset(hour, offset)?, offset)))
            .collect();
        keys.sort();
        keys
    }

    fn first_with_offset(&self, hour: DateTime, offset: Offset) -> Option<Timestamp> {
        let from = offset.to_timestamp(hour).ok()?;
        let until = from.checked_add(SignedDuration::from_secs(HOUR)).ok()?;
        if self.tz.to_offset(from) == offset {
            return Some(from);
        }
        let mut cursor = from;
        while let Some(at) = next_offset_change(&self.tz, cursor) {
            if at >= until {
                return None;
            }
            if self.tz.to_offset(at) == offset {
                return Some(at);
            }
            cursor = at;
        }
        None
    }

    fn offset_seconds(&self, at_second: i64) -> i64 {
        second(at_second).map_or(0, |t| i64::from(self.tz.to_offset(t).seconds()))
    }

    fn hour_number(&self, at_second: i64) -> i64 {
        (at_second + self.offset_seconds(at_second)).div_euclid(HOUR)
    }
}

/// The first boundary at or after `t`: `t` itself when the local clock shows a
/// whole hour or the offset changes there, else the next of those.
pub(crate) fn hour_boundary_at_or_after(tz: &TimeZone, t: Timestamp) -> Option<Timestamp> {
    let offset = i64::from(tz.to_offset(t).seconds());
    let local = t.as_second() + offset;
    let on_the_hour = local.rem_euclid(HOUR) == 0 && t.subsec_nanosecond() == 0;
    let just_before = t.checked_sub(SignedDuration::from_nanos(1)).ok();
    let changes_here = just_before.is_some_and(|b| next_offset_change(tz, b) == Some(t));
    if on_the_hour || changes_here {
        return Some(t);
    }

    let next_hour = second((local.div_euclid(HOUR) + 1) * HOUR - offset)?;
    match next_offset_change(tz, t) {
        Some(change) if change < next_hour => Some(change),
        _ => Some(next_hour),
    }
}

fn floor_second(t: Timestamp) -> i64 {
    t.as_second() - i64::from(t.subsec_nanosecond() < 0)
}

fn second(s: i64) -> Option<Timestamp> {
    Timestamp::from_second(s).ok()
}
