//! The cron grid: one window from each fire time to the next.
//!
//! Fire times follow no arithmetic, so they are found with the cron library and
//! kept in a shared, growing cache: the first question about year N costs a
//! walk to year N, later ones a binary search. The cache is capped at
//! [`MAX_CACHED_FIRES`]; past it the grid answers as if the schedule stopped.

use std::sync::{Arc, Mutex, PoisonError};

use croner::Cron;
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The most fire times one grid keeps (about 76 MiB of timestamps).
// FIXME(cron is not symbolic): a schedule with more fires than this between its
// start and `now` is cut short; an arithmetic model of simple cron expressions
// (fixed minute and hour lists) would lift the cap.
pub(crate) const MAX_CACHED_FIRES: usize = 5_000_000;

/// How far before the first window a cron grid steps back, one fire at a time.
const MAX_STEPS_BACK: i64 = 100_000;

#[derive(Clone)]
pub(crate) struct CronGrid {
    pub(crate) cron: Cron,
    pub(crate) tz: TimeZone,
    /// Fire times from the first window's start on, strictly increasing and
    /// never empty.
    fires: Arc<Mutex<Vec<Timestamp>>>,
}

impl std::fmt::Debug for CronGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronGrid")
            .field("cron", &self.cron.pattern.to_string())
            .finish()
    }
}

impl CronGrid {
    /// A grid whose first window starts at the first fire at or after `from`;
    /// `None` when the schedule never fires again.
    pub(crate) fn new(cron: Cron, tz: TimeZone, from: Timestamp) -> Option<CronGrid> {
        let zoned = from.to_zoned(tz.clone());
        let first = cron.find_next_occurrence(&zoned, true).ok()?.timestamp();
        let fires = Arc::new(Mutex::new(vec![first]));
        Some(CronGrid { cron, tz, fires })
    }

    pub(crate) fn first(&self) -> Timestamp {
        self.with_fires(|fires| fires.first().copied().unwrap_or(Timestamp::MAX))
    }

    pub(crate) fn window_start(&self, index: i64) -> Option<Timestamp> {
        if index < 0 {
            return self.step_back(self.first(), index.unsigned_abs());
        }
        let wanted = usize::try_from(index).ok()?;
        if wanted >= MAX_CACHED_FIRES {
            return None;
        }
        self.with_fires(|fires| {
            self.extend(fires, |fires| fires.len() > wanted);
            fires.get(wanted).copied()
        })
    }

    pub(crate) fn index_containing(&self, t: Timestamp) -> i64 {
        let first = self.first();
        if t < first {
            return self.count_back(first, t);
        }
        self.with_fires(|fires| {
            self.extend(fires, |fires| fires.last().is_some_and(|&last| last > t));
            let after = fires.partition_point(|&fire| fire <= t);
            i64::try_from(after).unwrap_or(i64::MAX) - 1
        })
    }

    /// Whether `t` is a fire time of the schedule.
    pub(crate) fn fires_at(&self, t: Timestamp) -> bool {
        let index = self.index_containing(t);
        self.window_start(index) == Some(t)
    }

    fn with_fires<R>(&self, work: impl FnOnce(&mut Vec<Timestamp>) -> R) -> R {
        let mut fires = self.fires.lock().unwrap_or_else(PoisonError::into_inner);
        work(&mut fires)
    }

    fn extend(&self, fires: &mut Vec<Timestamp>, done: impl Fn(&Vec<Timestamp>) -> bool) {
        while !done(fires) && fires.len() < MAX_CACHED_FIRES {
            let Some(&last) = fires.last() else { return };
            match self.next_fire(last) {
                Some(next) => fires.push(next),
                None => return,
            }
        }
    }

    fn next_fire(&self, after: Timestamp) -> Option<Timestamp> {
        let zoned = after.to_zoned(self.tz.clone());
        let next = self
            .cron
            .find_next_occurrence(&zoned, false)
            .ok()?
            .timestamp();
        (next > after).then_some(next)
    }

    fn previous_fire(&self, before: Timestamp) -> Option<Timestamp> {
        let zoned = before.to_zoned(self.tz.clone());
        let previous = self
            .cron
            .find_previous_occurrence(&zoned, false)
            .ok()?
            .timestamp();
        (previous < before).then_some(previous)
    }

    fn step_back(&self, from: Timestamp, steps: u64) -> Option<Timestamp> {
        if steps > MAX_STEPS_BACK as u64 {
            return None;
        }
        let mut at = from;
        for _ in 0..steps {
            at = self.previous_fire(at)?;
        }
        Some(at)
    }

    fn count_back(&self, first: Timestamp, t: Timestamp) -> i64 {
        let mut at = first;
        for steps in 1..=MAX_STEPS_BACK {
            match self.previous_fire(at) {
                Some(previous) if previous <= t => return -steps,
                Some(previous) => at = previous,
                None => return -steps,
            }
        }
        -MAX_STEPS_BACK
    }
}
