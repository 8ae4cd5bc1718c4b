//! The per-job index of tasks: what the actor asks about a job after every message (counts,
//! the tasks ready to release, what each region holds, the failures), kept up to date as each
//! task record is replaced ([`crate::state::Job::set_task`]). It exists so that the cost of a
//! message does not grow with the size of the job: no question walks the tasks.

use std::collections::{BTreeMap, BTreeSet};

use suanli_shared::fold::Tally;
use suanli_shared::protocol::{TaskRecord, TaskState};
use suanli_shared::{Region, WorkerId};

/// What the actor asks about a job's tasks after every message, kept up to date as each task
/// record is replaced, so that the cost of a message does not grow with the size of the job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskIndex {
    /// Task and frame counts per state.
    tally: Tally,
    /// Pending tasks that may be released now (their backoff is over), in task order.
    ready: BTreeSet<u32>,
    /// Pending tasks that may not be released yet: (not before, ms; task).
    /// [`TaskIndex::promote`] moves them to `ready` when their time comes.
    delayed: BTreeSet<(u64, u32)>,
    /// Queued and running tasks per region: region loss withdraws them, free slots count them.
    in_flight: BTreeMap<Region, BTreeSet<u32>>,
    /// Queued tasks per region: the queue a task that waits for the region joins.
    queued: BTreeMap<Region, u32>,
    /// Failed tasks, in task order: the failure reason names the first.
    failed: BTreeSet<u32>,
    /// The failures the task records keep, per (region, worker): the blocklist counts them.
    failures: BTreeMap<(Region, WorkerId), u32>,
}

/// Takes one from a count in a map, dropping the entry at zero.
fn decrement<K: Ord>(map: &mut BTreeMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl TaskIndex {
    /// The index of a set of task records, promoted at `now_ms`. Walks them all: for loading
    /// a job and for checking the incremental index.
    pub fn of<'a>(tasks: impl IntoIterator<Item = &'a TaskRecord>, now_ms: u64) -> Self {
        let mut index = TaskIndex::default();
        for t in tasks {
            index.add(t);
        }
        index.promote(now_ms);
        index
    }

    /// Counts a task record in.
    pub(crate) fn add(&mut self, t: &TaskRecord) {
        self.tally.add(t.state, t.chunk.len());
        match (t.state, &t.region) {
            (TaskState::Pending, _) => {
                self.delayed.insert((t.not_before_ms, t.task));
            }
            (TaskState::Queued | TaskState::Running, Some(region)) => {
                self.in_flight
                    .entry(region.clone())
                    .or_default()
                    .insert(t.task);
                if t.state == TaskState::Queued {
                    *self.queued.entry(region.clone()).or_default() += 1;
                }
            }
            (TaskState::Failed, _) => {
                self.failed.insert(t.task);
            }
            _ => {}
        }
        for f in &t.failures {
            *self
                .failures
                .entry((f.region.clone(), f.worker.clone()))
                .or_default() += 1;
        }
    }

    /// Takes back a task record that was counted in.
    pub(crate) fn remove(&mut self, t: &TaskRecord) {
        self.tally.remove(t.state, t.chunk.len());
        match (t.state, &t.region) {
            (TaskState::Pending, _) => {
                // Ready, or still waiting for its backoff: in one of the two.
                let _ =
                    self.ready.remove(&t.task) || self.delayed.remove(&(t.not_before_ms, t.task));
            }
            (TaskState::Queued | TaskState::Running, Some(region)) => {
                if let Some(set) = self.in_flight.get_mut(region) {
                    set.remove(&t.task);
                    if set.is_empty() {
                        self.in_flight.remove(region);
                    }
                }
                if t.state == TaskState::Queued {
                    decrement(&mut self.queued, region);
                }
            }
            (TaskState::Failed, _) => {
                self.failed.remove(&t.task);
            }
            _ => {}
        }
        for f in &t.failures {
            decrement(&mut self.failures, &(f.region.clone(), f.worker.clone()));
        }
    }

    /// Moves the pending tasks whose backoff is over by `now_ms` to the ready set.
    pub fn promote(&mut self, now_ms: u64) {
        while let Some(&(at, task)) = self.delayed.first() {
            if at > now_ms {
                break;
            }
            self.delayed.pop_first();
            self.ready.insert(task);
        }
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The ready tasks (as of the last [`TaskIndex::promote`]), in task order.
    pub fn ready(&self) -> &BTreeSet<u32> {
        &self.ready
    }

    /// Queued and running tasks per region.
    pub fn in_flight_by_region(&self) -> &BTreeMap<Region, BTreeSet<u32>> {
        &self.in_flight
    }

    /// Tasks queued in `region` and not started.
    pub fn queued_in(&self, region: &Region) -> u32 {
        self.queued.get(region).copied().unwrap_or(0)
    }

    /// Failed tasks, in task order.
    pub fn failed(&self) -> &BTreeSet<u32> {
        &self.failed
    }

    /// The failures the task records keep, per (region, worker).
    pub fn failures(&self) -> &BTreeMap<(Region, WorkerId), u32> {
        &self.failures
    }
}
