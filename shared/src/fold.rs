//! The record-keeping fold of task events into task records, and the task counts derived from
//! them. One copy serves the coordinator (which persists what changes and owns the retry
//! decision) and the operator terminal (which shows the same transitions between polls), so the
//! two can never disagree about a stale attempt, a late completion or a capped failure list.

use crate::protocol::{
    FrameCounts, JobState, TaskCounts, TaskEvent, TaskEventKind, TaskRecord, TaskState,
};

/// How many failures a task record keeps (the oldest are dropped).
pub const FAILURES_KEPT: usize = 5;

/// What becomes of a failed attempt. The caller decides: the coordinator from the job's retry
/// budget and its backoff, the terminal by predicting the coordinator's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back to the backlog as the next attempt, not to be released before this time (ms).
    Retry { not_before_ms: u64 },
    /// The task has failed for good.
    Fail,
}

/// What an event does to a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The event is stale, a duplicate or carries nothing to keep (progress): change nothing.
    Ignored,
    /// The task record must become this.
    Changed(Box<TaskRecord>),
}

/// Folds one task event into a task record.
///
/// - A final task, or any task of a canceled job, ignores every event.
/// - `started` and `failed` from an attempt older than the record's are stale and ignored.
/// - `completed` from any attempt wins: the same task key means the same pixels.
/// - `progress` keeps nothing in the record.
/// - A failure is appended to the record's failures (the last [`FAILURES_KEPT`] are kept);
///   `after_failure(attempt)` says whether it is retried.
pub fn apply_event(
    task: &TaskRecord,
    ev: &TaskEvent,
    job_state: JobState,
    after_failure: impl FnOnce(u32) -> AfterFailure,
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
            next.finished_ms = None;
        }
        TaskEventKind::Progress { .. } => return Applied::Ignored,
        TaskEventKind::Completed {
            cached,
            started_ms,
            core_seconds,
            outputs,
            bytes_in,
            gpu,
        } => {
            next.gpu = gpu.clone();
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
            let extra = next.failures.len().saturating_sub(FAILURES_KEPT);
            next.failures.drain(..extra);
            next.worker = Some(ev.worker.clone());
            next.region = Some(ev.region.clone());
            match after_failure(ev.attempt) {
                AfterFailure::Retry { not_before_ms } => {
                    next.state = TaskState::Pending;
                    next.attempt = ev.attempt + 1;
                    next.not_before_ms = not_before_ms;
                    next.region = None;
                }
                AfterFailure::Fail => {
                    next.attempt = ev.attempt;
                    next.state = TaskState::Failed;
                    next.finished_ms = Some(ev.at_ms);
                }
            }
        }
    }
    Applied::Changed(Box::new(next))
}

/// Task and frame counts of one job, kept incrementally: [`Tally::add`] a task's state when it
/// appears, [`Tally::remove`] the old state when it changes. The cost of a change does not
/// depend on the size of the job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub tasks: TaskCounts,
    pub frames: FrameCounts,
}

impl Tally {
    /// The counts of a set of task records.
    pub fn of<'a>(tasks: impl IntoIterator<Item = &'a TaskRecord>) -> Self {
        let mut tally = Tally::default();
        for t in tasks {
            tally.add(t.state, t.chunk.len());
        }
        tally
    }

    /// Counts one task of `frames` frames in `state`.
    pub fn add(&mut self, state: TaskState, frames: u32) {
        self.step(state, frames, true);
    }

    /// Takes back one task of `frames` frames that was counted in `state`.
    pub fn remove(&mut self, state: TaskState, frames: u32) {
        self.step(state, frames, false);
    }

    fn step(&mut self, state: TaskState, frames: u32, add: bool) {
        fn bump(n: &mut u32, by: u32, add: bool) {
            *n = if add {
                n.saturating_add(by)
            } else {
                n.saturating_sub(by)
            };
        }
        let (t, f) = (&mut self.tasks, &mut self.frames);
        bump(&mut t.total, 1, add);
        bump(&mut f.total, frames, add);
        match state {
            TaskState::Pending => bump(&mut t.pending, 1, add),
            TaskState::Queued => bump(&mut t.queued, 1, add),
            TaskState::Running => bump(&mut t.running, 1, add),
            TaskState::Done => {
                bump(&mut t.done, 1, add);
                bump(&mut f.done, frames, add);
            }
            TaskState::Cached => {
                bump(&mut t.done, 1, add);
                bump(&mut t.cached, 1, add);
                bump(&mut f.done, frames, add);
                bump(&mut f.cached, frames, add);
            }
            TaskState::Failed => {
                bump(&mut t.failed, 1, add);
                bump(&mut f.failed, frames, add);
            }
            TaskState::Canceled => bump(&mut t.canceled, 1, add),
        }
    }

    /// The state a job in `current` should be in, given these counts (cancel is sticky).
    pub fn job_state(&self, current: JobState) -> JobState {
        if current == JobState::Canceled {
            return current;
        }
        let t = &self.tasks;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Failure;
    use crate::{ContentHash, FrameChunk, JobId};

    fn task() -> TaskRecord {
        let mut t = TaskRecord::new(
            JobId::generate(),
            0,
            ContentHash::of(b"k"),
            FrameChunk::single(1),
            TaskState::Queued,
            None,
        );
        t.region = Some("guian".parse().unwrap());
        t
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

    fn completed(t: &TaskRecord, attempt: u32) -> TaskEvent {
        event(
            t,
            attempt,
            TaskEventKind::Completed {
                cached: false,
                started_ms: 1_000,
                core_seconds: 4.0,
                outputs: vec![],
                bytes_in: 10,
                gpu: None,
            },
        )
    }

    fn changed(a: Applied) -> TaskRecord {
        match a {
            Applied::Changed(t) => *t,
            Applied::Ignored => panic!("event was ignored"),
        }
    }

    const RETRY: fn(u32) -> AfterFailure = |_| AfterFailure::Retry { not_before_ms: 9 };
    const FAIL: fn(u32) -> AfterFailure = |_| AfterFailure::Fail;

    #[test]
    fn a_retried_failure_goes_back_to_the_backlog_as_the_next_attempt() {
        let t0 = task();
        let t1 = changed(apply_event(&t0, &failed(&t0, 0), JobState::Running, RETRY));
        assert_eq!(
            (t1.state, t1.attempt, t1.not_before_ms),
            (TaskState::Pending, 1, 9)
        );
        assert_eq!(t1.region, None, "a retry is placed afresh");
        assert_eq!(t1.failures.len(), 1);
        let t2 = changed(apply_event(&t1, &failed(&t1, 1), JobState::Running, FAIL));
        assert_eq!((t2.state, t2.attempt), (TaskState::Failed, 1));
        assert_eq!(t2.finished_ms, Some(5_000));
    }

    #[test]
    fn stale_starts_and_failures_are_ignored_but_a_late_completion_wins() {
        let mut t = task();
        t.attempt = 2;
        assert_eq!(
            apply_event(
                &t,
                &event(&t, 1, TaskEventKind::Started),
                JobState::Running,
                FAIL
            ),
            Applied::Ignored
        );
        assert_eq!(
            apply_event(&t, &failed(&t, 1), JobState::Running, FAIL),
            Applied::Ignored
        );
        let done = changed(apply_event(&t, &completed(&t, 1), JobState::Running, FAIL));
        assert_eq!(
            (done.state, done.core_seconds, done.bytes_in),
            (TaskState::Done, 4.0, 10)
        );
        assert_eq!(
            apply_event(&done, &completed(&t, 2), JobState::Running, FAIL),
            Applied::Ignored,
            "a final task takes no more events"
        );
    }

    #[test]
    fn a_canceled_job_and_progress_change_nothing() {
        let t = task();
        assert_eq!(
            apply_event(&t, &completed(&t, 0), JobState::Canceled, FAIL),
            Applied::Ignored
        );
        let progress = event(&t, 0, TaskEventKind::Progress { fraction: 0.5 });
        assert_eq!(
            apply_event(&t, &progress, JobState::Running, FAIL),
            Applied::Ignored
        );
    }

    #[test]
    fn the_failure_list_is_capped_keeping_the_newest() {
        let mut t = task();
        for attempt in 0..8 {
            t = changed(apply_event(
                &t,
                &failed(&t, attempt),
                JobState::Running,
                RETRY,
            ));
        }
        assert_eq!(t.failures.len(), FAILURES_KEPT);
        assert_eq!(t.failures.first().unwrap().attempt, 3);
        assert_eq!(t.failures.last().unwrap().attempt, 7);
    }

    #[test]
    fn the_tally_follows_changes_and_derives_the_job_state() {
        let mut chunk_of_3 = task();
        chunk_of_3.chunk = "1-3"
            .parse::<crate::FrameSpec>()
            .unwrap()
            .chunks(3)
            .unwrap()[0];
        let single = task();
        let mut tally = Tally::of([&chunk_of_3, &single]);
        assert_eq!(
            (tally.tasks.total, tally.tasks.queued, tally.frames.total),
            (2, 2, 4)
        );
        assert_eq!(tally.job_state(JobState::Queued), JobState::Queued);
        tally.remove(TaskState::Queued, 3);
        tally.add(TaskState::Running, 3);
        assert_eq!(tally.job_state(JobState::Queued), JobState::Running);
        tally.remove(TaskState::Running, 3);
        tally.add(TaskState::Done, 3);
        tally.remove(TaskState::Queued, 1);
        tally.add(TaskState::Cached, 1);
        assert_eq!(
            (
                tally.tasks.done,
                tally.tasks.cached,
                tally.frames.done,
                tally.frames.cached
            ),
            (2, 1, 4, 1)
        );
        assert_eq!(tally.job_state(JobState::Running), JobState::Done);
        assert_eq!(tally.job_state(JobState::Canceled), JobState::Canceled);
        tally.remove(TaskState::Done, 3);
        tally.add(TaskState::Failed, 3);
        assert_eq!(tally.job_state(JobState::Running), JobState::Failed);
        chunk_of_3.state = TaskState::Failed;
        let mut single = single;
        single.state = TaskState::Cached;
        assert_eq!(
            tally,
            Tally::of([&chunk_of_3, &single]),
            "incremental = recount"
        );
    }
}
