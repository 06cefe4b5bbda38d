//! Which ready steps a claim may take when queue limits or run caps apply.
//!
//! A claim without limits takes the first ready steps in claim order (priority,
//! then scheduled time, then id) in one statement. When a queue it serves has
//! a limit ([`QueueLimits`](crate::store::QueueLimits)), or a running run has a
//! cap ([`NewRun::max_parallel`](crate::store::NewRun::max_parallel)), the
//! backend first serializes the claim with every other limited claim (an
//! advisory lock on PostgreSQL; SQLite has one writer), counts the free slots
//! of each limited queue and capped run into [`Slots`], and then lets
//! a [`Chooser`] walk the ready steps in claim order, taking a step only while
//! both its queue and its run have a free slot. Both backends share this walk,
//! so they agree on which steps a limited claim takes.

use std::collections::HashMap;

use crate::ids::{RunId, StepId};

/// Rounds of a [`Chooser`] at most; each round after the first is caused by a
/// queue or run that filled up, so this is only a guard.
const MAX_ROUNDS: usize = 8;

/// Free slots of the limited queues and capped runs a claim may touch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slots {
    queues: HashMap<String, u32>,
    runs: HashMap<RunId, u32>,
}

impl Slots {
    /// Queue `name` has `free` slots (a negative count, after a limit was
    /// lowered, is none).
    pub fn queue(&mut self, name: impl Into<String>, free: i64) {
        self.queues.insert(name.into(), clamp(free));
    }

    /// Run `run` has `free` slots under its cap.
    pub fn run(&mut self, run: RunId, free: i64) {
        self.runs.insert(run, clamp(free));
    }

    /// Queues with no free slot: a claim leaves their steps out.
    pub fn full_queues(&self) -> Vec<String> {
        let mut full: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, free)| **free == 0)
            .map(|(name, _)| name.clone())
            .collect();
        full.sort();
        full
    }

    /// Runs with no free slot.
    pub fn full_runs(&self) -> Vec<RunId> {
        let mut full: Vec<RunId> = self
            .runs
            .iter()
            .filter(|(_, free)| **free == 0)
            .map(|(run, _)| *run)
            .collect();
        full.sort();
        full
    }

    /// Takes a slot of `queue` and of `run` if both have one (a queue or run
    /// not tracked here is unlimited).
    pub fn take(&mut self, queue: &str, run: RunId) -> bool {
        let queue_free = self.queues.get(queue).copied();
        let run_free = self.runs.get(&run).copied();
        if queue_free == Some(0) || run_free == Some(0) {
            return false;
        }
        if let Some(free) = self.queues.get_mut(queue) {
            *free -= 1;
        }
        if let Some(free) = self.runs.get_mut(&run) {
            *free -= 1;
        }
        true
    }
}

fn clamp(free: i64) -> u32 {
    u32::try_from(free.max(0)).unwrap_or(u32::MAX)
}

/// A ready step, as a [`Chooser`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: StepId,
    pub queue: String,
    pub run: RunId,
}

/// What a round's query leaves out, and how many steps it asks for.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Queues without a free slot.
    pub full_queues: Vec<String>,
    /// Runs without a free slot.
    pub full_runs: Vec<RunId>,
    /// Steps chosen in earlier rounds (still ready until the claim's update).
    pub chosen: Vec<StepId>,
    /// Ready steps to fetch at most.
    pub want: u32,
}

/// Chooses up to `limit` steps within the slots, in claim order, over rounds
/// of a backend's query:
///
/// ```text
/// let mut chooser = Chooser::new(slots, limit);
/// while let Some(round) = chooser.next_round() {
///     let ready = /* up to round.want ready steps in claim order, leaving out
///                    round.full_queues, round.full_runs and round.chosen */;
///     chooser.offer(ready);
/// }
/// let steps = chooser.into_chosen();
/// ```
///
/// A step whose queue or run has no slot left is passed over; its queue or
/// run is then full, so the next round's query leaves it out and reaches the
/// steps behind it.
#[derive(Debug)]
pub struct Chooser {
    slots: Slots,
    limit: usize,
    chosen: Vec<StepId>,
    rounds: usize,
    done: bool,
}

impl Chooser {
    pub fn new(slots: Slots, limit: u32) -> Self {
        Chooser {
            slots,
            limit: limit as usize,
            chosen: Vec::new(),
            rounds: 0,
            done: limit == 0,
        }
    }

    /// The next query to run, or `None` when the choice is made.
    pub fn next_round(&self) -> Option<Round> {
        if self.done || self.rounds >= MAX_ROUNDS {
            return None;
        }
        Some(Round {
            full_queues: self.slots.full_queues(),
            full_runs: self.slots.full_runs(),
            chosen: self.chosen.clone(),
            want: u32::try_from(self.limit - self.chosen.len()).unwrap_or(u32::MAX),
        })
    }

    /// The ready steps the last round's query returned, in claim order.
    pub fn offer(&mut self, ready: Vec<Candidate>) {
        let want = self.limit - self.chosen.len();
        let exhausted = ready.len() < want;
        let mut passed_over = false;
        for candidate in ready {
            if self.chosen.len() == self.limit {
                break;
            }
            if self.slots.take(&candidate.queue, candidate.run) {
                self.chosen.push(candidate.id);
            } else {
                passed_over = true;
            }
        }
        self.rounds += 1;
        self.done = self.chosen.len() == self.limit || exhausted || !passed_over;
    }

    /// The steps chosen, in claim order.
    pub fn into_chosen(self) -> Vec<StepId> {
        self.chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: u128) -> RunId {
        RunId(uuid::Uuid::from_u128(n))
    }

    fn step(id: i64, queue: &str, r: u128) -> Candidate {
        Candidate {
            id: StepId(id),
            queue: queue.to_owned(),
            run: run(r),
        }
    }

    /// A fake ready list, filtered as a backend's query would.
    fn pick(slots: Slots, limit: u32, ready: &[Candidate]) -> (Vec<i64>, usize) {
        let mut chooser = Chooser::new(slots, limit);
        let mut rounds = 0;
        while let Some(round) = chooser.next_round() {
            rounds += 1;
            chooser.offer(
                ready
                    .iter()
                    .filter(|c| {
                        !round.full_queues.contains(&c.queue)
                            && !round.full_runs.contains(&c.run)
                            && !round.chosen.contains(&c.id)
                    })
                    .take(round.want as usize)
                    .cloned()
                    .collect(),
            );
        }
        (
            chooser.into_chosen().into_iter().map(|s| s.0).collect(),
            rounds,
        )
    }

    #[test]
    fn a_full_queue_is_passed_over_for_the_steps_behind_it() {
        let ready = [
            step(1, "llm", 1),
            step(2, "llm", 1),
            step(3, "llm", 1),
            step(4, "default", 1),
            step(5, "default", 1),
        ];
        let mut slots = Slots::default();
        slots.queue("llm", 1);
        let (chosen, rounds) = pick(slots, 3, &ready);
        assert_eq!(chosen, vec![1, 4, 5]);
        assert_eq!(rounds, 2);
    }

    #[test]
    fn queue_and_run_limits_hold_together() {
        let ready = [
            step(1, "a", 1),
            step(2, "b", 1),
            step(3, "a", 2),
            step(4, "a", 2),
            step(5, "b", 2),
        ];
        let mut slots = Slots::default();
        slots.queue("a", 2);
        slots.run(run(1), 1);
        let (chosen, _) = pick(slots, 10, &ready);
        // Run 1 takes one step (1); queue a then has one slot (3); b is free.
        assert_eq!(chosen, vec![1, 3, 5]);
    }

    #[test]
    fn no_free_slot_takes_nothing_and_a_lowered_limit_counts_as_full() {
        let ready = [step(1, "a", 1)];
        let mut slots = Slots::default();
        slots.queue("a", -2);
        let (chosen, rounds) = pick(slots, 4, &ready);
        assert!(chosen.is_empty());
        assert_eq!(rounds, 1);
    }

    #[test]
    fn unlimited_steps_fill_the_claim_in_order() {
        let ready: Vec<Candidate> = (1..=10).map(|i| step(i, "default", 1)).collect();
        let slots = Slots::default();
        let (chosen, rounds) = pick(slots, 4, &ready);
        assert_eq!(chosen, vec![1, 2, 3, 4]);
        assert_eq!(rounds, 1);
    }
}
