//! The coordinator's view of jobs and tasks: the in-memory mirror of the `suanli_jobs` and
//! `suanli_tasks` buckets, and the pure rules that fold task events into it. Nothing here does
//! I/O, so every transition is unit-tested; the actor in `lib.rs` persists what changes.

use std::collections::BTreeMap;

pub use suanli_shared::fold::Applied;
use suanli_shared::fold::{self, AfterFailure, Tally};
use suanli_shared::protocol::{
    Blocklisted, FrameCounts, JobRecord, JobState, JobStatus, RegionFigures, TaskCounts, TaskEvent,
    TaskFailure, TaskRecord, TaskState, BLOCKLIST_AFTER, MAX_FAILURES_SHOWN,
};
use suanli_shared::{Region, WorkerId};

/// A record with the KV revision it was read or written at (for compare-and-set).
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub rec: T,
    pub rev: u64,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub rec: Versioned<JobRecord>,
    pub tasks: Vec<Versioned<TaskRecord>>,
}

/// Retry backoff after the `attempt`-th failure: 1 s, 2 s, 4 s … capped at one minute.
pub fn retry_backoff_ms(attempt: u32) -> u64 {
    1000u64.saturating_mul(1 << attempt.min(6)).min(60_000)
}

/// Folds one task event into a task record: the shared record-keeping fold, with the
/// coordinator's retry decision (the job's `max_retries`, then [`retry_backoff_ms`]).
pub fn apply_event(
    task: &TaskRecord,
    ev: &TaskEvent,
    max_retries: u32,
    job_state: JobState,
    now_ms: u64,
) -> Applied {
    fold::apply_event(task, ev, job_state, |attempt| {
        if attempt < max_retries {
            AfterFailure::Retry {
                not_before_ms: now_ms + retry_backoff_ms(attempt),
            }
        } else {
            AfterFailure::Fail
        }
    })
}

impl Job {
    pub fn counts(&self) -> (TaskCounts, FrameCounts) {
        let tally = Tally::of(self.tasks.iter().map(|t| &t.rec));
        (tally.tasks, tally.frames)
    }

    /// The state the job should be in, given its tasks (cancel is sticky).
    pub fn derived_state(&self) -> JobState {
        Tally::of(self.tasks.iter().map(|t| &t.rec)).job_state(self.rec.rec.state)
    }

    /// Why a failed job failed, in one line.
    pub fn failure_reason(&self) -> Option<String> {
        let failed: Vec<&TaskRecord> = self
            .tasks
            .iter()
            .map(|t| &t.rec)
            .filter(|t| t.state == TaskState::Failed)
            .collect();
        let first = failed.first()?;
        let last = first.failures.last();
        Some(format!(
            "{} task(s) failed after their retries; first: frames {}: {}",
            failed.len(),
            first.chunk,
            last.map(|f| f.reason.as_str()).unwrap_or("unknown reason")
        ))
    }

    pub fn status(&self) -> JobStatus {
        let (tasks, frames) = self.counts();
        let mut regions: BTreeMap<String, RegionFigures> = BTreeMap::new();
        let mut failures = Vec::new();
        let mut failures_total = 0;
        for task in &self.tasks {
            let t = &task.rec;
            if t.state == TaskState::Done {
                if let Some(region) = &t.region {
                    let r = regions.entry(region.to_string()).or_default();
                    r.frames_done += t.chunk.len();
                    r.core_seconds += t.core_seconds;
                    r.bytes_in += t.bytes_in;
                }
            }
            if let Some(f) = t.failures.last() {
                failures_total += 1;
                if failures.len() < MAX_FAILURES_SHOWN {
                    failures.push(TaskFailure {
                        task: t.task,
                        frames: t.chunk.to_string(),
                        state: t.state,
                        failure: f.clone(),
                    });
                }
            }
        }
        let rec = &self.rec.rec;
        JobStatus {
            id: rec.id.clone(),
            name: rec.spec.name.clone(),
            state: rec.state,
            priority: rec.spec.priority,
            renderer: rec.spec.renderer.kind().to_string(),
            created_ms: rec.created_ms,
            finished_ms: rec.finished_ms,
            reason: rec.reason.clone(),
            frames,
            tasks,
            regions,
            failures,
            failures_total,
            blocklist: rec.blocklist.clone(),
            max_retries: rec.spec.max_retries,
        }
    }

    /// Workers that have now failed this job [`BLOCKLIST_AFTER`] times and are not blocklisted
    /// yet. Counted from the failures the task records keep, so the count survives a restart.
    pub fn new_blocklisted(&self, now_ms: u64) -> Vec<Blocklisted> {
        let mut counts: BTreeMap<(&Region, &WorkerId), u32> = BTreeMap::new();
        for t in &self.tasks {
            for f in &t.rec.failures {
                *counts.entry((&f.region, &f.worker)).or_default() += 1;
            }
        }
        let listed = &self.rec.rec.blocklist;
        counts
            .into_iter()
            .filter(|((region, worker), n)| {
                *n >= BLOCKLIST_AFTER
                    && !listed
                        .iter()
                        .any(|b| &b.region == *region && &b.worker == *worker)
            })
            .map(|((region, worker), failures)| Blocklisted {
                region: region.clone(),
                worker: worker.clone(),
                failures,
                at_ms: now_ms,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_shared::protocol::{Failure, TaskEventKind};
    use suanli_shared::{ContentHash, FrameChunk, JobId};

    fn task() -> TaskRecord {
        TaskRecord {
            job: JobId::generate(),
            task: 0,
            key: ContentHash::of(b"k"),
            chunk: FrameChunk::single(1),
            state: TaskState::Queued,
            attempt: 0,
            region: Some("guian".parse().unwrap()),
            worker: None,
            started_ms: None,
            finished_ms: None,
            core_seconds: 0.0,
            not_before_ms: 0,
            failures: vec![],
            outputs: vec![],
            bytes_in: 0,
            releases: 0,
        }
    }

    fn event(t: &TaskRecord, attempt: u32, kind: TaskEventKind) -> TaskEvent {
        TaskEvent {
            job: t.job.clone(),
            task: t.task,
            key: t.key,
            attempt,
            worker: "w1".parse().unwrap(),
            region: "guian".parse().unwrap(),
            at_ms: 5_000,
            kind,
        }
    }

    fn failed(t: &TaskRecord, attempt: u32) -> TaskEvent {
        event(
            t,
            attempt,
            TaskEventKind::Failed {
                failure: Failure {
                    exit_code: Some(3),
                    reason: "renderer exited with code 3".into(),
                    stderr_tail: "boom".into(),
                    worker: "w1".parse().unwrap(),
                    region: "guian".parse().unwrap(),
                    attempt,
                    at_ms: 5_000,
                },
            },
        )
    }

    fn changed(a: Applied) -> TaskRecord {
        match a {
            Applied::Changed(t) => *t,
            Applied::Ignored => panic!("event was ignored"),
        }
    }

    #[test]
    fn failures_retry_with_backoff_then_fail() {
        let t0 = task();
        let t1 = changed(apply_event(
            &t0,
            &failed(&t0, 0),
            2,
            JobState::Running,
            10_000,
        ));
        assert_eq!((t1.state, t1.attempt), (TaskState::Pending, 1));
        assert_eq!(t1.not_before_ms, 11_000);
        // A late failure from the old attempt changes nothing.
        assert_eq!(
            apply_event(&t1, &failed(&t0, 0), 2, JobState::Running, 10_000),
            Applied::Ignored
        );
        let t2 = changed(apply_event(
            &t1,
            &failed(&t1, 1),
            2,
            JobState::Running,
            20_000,
        ));
        assert_eq!((t2.state, t2.attempt), (TaskState::Pending, 2));
        let t3 = changed(apply_event(
            &t2,
            &failed(&t2, 2),
            2,
            JobState::Running,
            30_000,
        ));
        assert_eq!(t3.state, TaskState::Failed);
        assert_eq!(t3.failures.len(), 3);
        assert_eq!(t3.failures.last().unwrap().stderr_tail, "boom");
    }

    #[test]
    fn completion_from_any_attempt_wins_once() {
        let mut t = task();
        t.attempt = 2;
        let done = event(
            &t,
            1,
            TaskEventKind::Completed {
                cached: false,
                started_ms: 1_000,
                core_seconds: 4.0,
                outputs: vec![],
                bytes_in: 10,
            },
        );
        let t2 = changed(apply_event(&t, &done, 3, JobState::Running, 6_000));
        assert_eq!(t2.state, TaskState::Done);
        assert_eq!(t2.core_seconds, 4.0);
        assert_eq!(
            apply_event(&t2, &done, 3, JobState::Running, 7_000),
            Applied::Ignored
        );
        assert_eq!(
            apply_event(&t, &done, 3, JobState::Canceled, 7_000),
            Applied::Ignored
        );
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(retry_backoff_ms(0), 1000);
        assert_eq!(retry_backoff_ms(3), 8000);
        assert_eq!(retry_backoff_ms(30), 60_000);
    }
}
