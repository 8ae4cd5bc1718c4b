//! The coordinator's view of jobs and tasks: the in-memory mirror of the `suanli_jobs` and
//! `suanli_tasks` buckets, and the pure rules that fold task events into it. Nothing here does
//! I/O, so every transition is unit-tested; the actor in `lib.rs` persists what changes.

use std::collections::BTreeMap;

use suanli_shared::protocol::{
    Blocklisted, FrameCounts, JobRecord, JobState, JobStatus, RegionFigures, TaskCounts, TaskEvent,
    TaskEventKind, TaskFailure, TaskRecord, TaskState, BLOCKLIST_AFTER, MAX_FAILURES_SHOWN,
};
use suanli_shared::{Region, WorkerId};

/// How many failures a task record keeps (the oldest are dropped).
const FAILURES_KEPT: usize = 5;

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

/// What an event does to a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The event is stale or a duplicate: acknowledge it and change nothing.
    Ignored,
    /// The task record must become this.
    Changed(Box<TaskRecord>),
}

/// Retry backoff after the `attempt`-th failure: 1 s, 2 s, 4 s … capped at one minute.
pub fn retry_backoff_ms(attempt: u32) -> u64 {
    1000u64.saturating_mul(1 << attempt.min(6)).min(60_000)
}

/// Folds one task event into a task record. `max_retries` comes from the job.
pub fn apply_event(
    task: &TaskRecord,
    ev: &TaskEvent,
    max_retries: u32,
    job_state: JobState,
    now_ms: u64,
) -> Applied {
    if task.state.is_final() || job_state == JobState::Canceled {
        return Applied::Ignored;
    }
    let mut next = task.clone();
    match &ev.kind {
        TaskEventKind::Started => {
            if ev.attempt < task.attempt {
                return Applied::Ignored;
            }
            next.state = TaskState::Running;
            next.attempt = ev.attempt;
            next.worker = Some(ev.worker.clone());
            next.region = Some(ev.region.clone());
            next.started_ms = Some(ev.at_ms);
        }
        TaskEventKind::Progress { .. } => return Applied::Ignored,
        TaskEventKind::Completed {
            cached,
            started_ms,
            core_seconds,
            outputs,
            bytes_in,
        } => {
            // Any attempt's output is valid: same task key, same pixels.
            next.state = if *cached {
                TaskState::Cached
            } else {
                TaskState::Done
            };
            next.worker = Some(ev.worker.clone());
            next.region = Some(ev.region.clone());
            next.started_ms = Some(*started_ms);
            next.finished_ms = Some(ev.at_ms);
            next.core_seconds = *core_seconds;
            next.outputs = outputs.clone();
            next.bytes_in = *bytes_in;
        }
        TaskEventKind::Failed { failure } => {
            if ev.attempt < task.attempt {
                return Applied::Ignored;
            }
            next.failures.push(failure.clone());
            if next.failures.len() > FAILURES_KEPT {
                next.failures.remove(0);
            }
            next.worker = Some(ev.worker.clone());
            next.region = Some(ev.region.clone());
            if ev.attempt < max_retries {
                next.state = TaskState::Pending;
                next.attempt = ev.attempt + 1;
                next.not_before_ms = now_ms + retry_backoff_ms(ev.attempt);
                next.region = None;
            } else {
                next.state = TaskState::Failed;
                next.finished_ms = Some(ev.at_ms);
            }
        }
    }
    Applied::Changed(Box::new(next))
}

impl Job {
    pub fn counts(&self) -> (TaskCounts, FrameCounts) {
        let mut t = TaskCounts {
            total: self.tasks.len() as u32,
            ..Default::default()
        };
        let mut f = FrameCounts::default();
        for task in &self.tasks {
            let n = task.rec.chunk.len();
            f.total += n;
            match task.rec.state {
                TaskState::Pending => t.pending += 1,
                TaskState::Queued => t.queued += 1,
                TaskState::Running => t.running += 1,
                TaskState::Done => {
                    t.done += 1;
                    f.done += n;
                }
                TaskState::Cached => {
                    t.done += 1;
                    t.cached += 1;
                    f.done += n;
                    f.cached += n;
                }
                TaskState::Failed => {
                    t.failed += 1;
                    f.failed += n;
                }
                TaskState::Canceled => t.canceled += 1,
            }
        }
        (t, f)
    }

    /// The state the job should be in, given its tasks (cancel is sticky).
    pub fn derived_state(&self) -> JobState {
        let current = self.rec.rec.state;
        if current == JobState::Canceled {
            return current;
        }
        let (t, _) = self.counts();
        if t.done == t.total {
            JobState::Done
        } else if t.done + t.failed == t.total {
            JobState::Failed
        } else if t.running > 0 || t.done > 0 || t.failed > 0 || current == JobState::Running {
            JobState::Running
        } else {
            JobState::Queued
        }
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
    use suanli_shared::protocol::Failure;
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
