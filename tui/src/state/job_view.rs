//! The open job as the job view shows it: every task record (loaded page by page, then kept
//! fresh by live events and polls), their counts, and the selection. Events are folded with
//! the coordinator's own fold ([`suanli_shared::fold`]), so the screen shows between polls
//! exactly what the coordinator records; only progress, which the coordinator does not keep,
//! is the terminal's own.

use std::collections::HashMap;

use suanli_shared::fold::{self, AfterFailure, Applied};
use suanli_shared::protocol::{
    JobState, JobStatus, TaskEvent, TaskEventKind, TaskRecord, TaskState,
};
use suanli_shared::{JobId, Studio};

use super::series::Mean;

/// Counts of the open job's task records: the coordinator's tally of the loaded ones, plus the
/// ones whose page has not arrived yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub loaded: fold::Tally,
    /// Tasks not loaded yet.
    pub unknown: u32,
}

impl Tally {
    /// Tasks in `state` (`None`: not loaded yet), as the legend counts them: `Done` is the
    /// rendered tasks only, cache hits are `Cached`.
    pub fn count(&self, state: Option<TaskState>) -> u32 {
        let t = &self.loaded.tasks;
        match state {
            None => self.unknown,
            Some(TaskState::Pending) => t.pending,
            Some(TaskState::Queued) => t.queued,
            Some(TaskState::Running) => t.running,
            Some(TaskState::Done) => t.done.saturating_sub(t.cached),
            Some(TaskState::Cached) => t.cached,
            Some(TaskState::Failed) => t.failed,
            Some(TaskState::Canceled) => t.canceled,
        }
    }
}

/// The open job: its task records (loaded page by page, then kept fresh by events and
/// polls) and the selected task.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub job: JobId,
    /// The job's studio: where its frames are stored (the preview reads them there).
    pub studio: Studio,
    /// Indexed by task number; `None` until its page arrives.
    pub tasks: Vec<Option<TaskRecord>>,
    pub tally: Tally,
    pub sel: u32,
    /// Latest progress fraction of running tasks, from progress events.
    pub progress: HashMap<u32, f32>,
    /// The rendered task that finished last (for the preview).
    pub last_rendered: Option<u32>,
    /// Durations of the rendered tasks loaded, for the ETA.
    pub durations: Mean,
}

impl JobView {
    pub fn new(job: JobId, studio: Studio, total: u32) -> Self {
        Self {
            job,
            studio,
            tasks: vec![None; total as usize],
            tally: Tally {
                loaded: fold::Tally::default(),
                unknown: total,
            },
            sel: 0,
            progress: HashMap::new(),
            last_rendered: None,
            durations: Mean::default(),
        }
    }

    pub fn total(&self) -> u32 {
        self.tasks.len() as u32
    }

    pub fn selected(&self) -> Option<&TaskRecord> {
        self.tasks.get(self.sel as usize).and_then(|t| t.as_ref())
    }

    pub(super) fn resize(&mut self, total: u32) {
        while self.tasks.len() < total as usize {
            self.tasks.push(None);
            self.tally.unknown += 1;
        }
    }

    /// Replaces one task record, keeping the tally, durations and last rendered task right.
    pub fn set_task(&mut self, rec: TaskRecord) {
        let idx = rec.task as usize;
        if idx >= self.tasks.len() {
            self.resize(rec.task + 1);
        }
        let old = self.tasks[idx].take();
        match &old {
            None => self.tally.unknown -= 1,
            Some(o) => self.tally.loaded.remove(o.state, o.chunk.len()),
        }
        if let Some(d) = old.as_ref().and_then(render_secs) {
            self.durations.sum -= d;
            self.durations.n -= 1;
        }
        self.tally.loaded.add(rec.state, rec.chunk.len());
        if let Some(d) = render_secs(&rec) {
            self.durations.add(d);
        }
        if rec.state != TaskState::Running {
            self.progress.remove(&rec.task);
        }
        if rec.state == TaskState::Done && !rec.outputs.is_empty() {
            let newer = match self.last_rendered {
                None => true,
                Some(i) if i == rec.task => true,
                Some(i) => self.tasks[i as usize]
                    .as_ref()
                    .is_none_or(|r| r.finished_ms <= rec.finished_ms),
            };
            if newer {
                self.last_rendered = Some(rec.task);
            }
        }
        self.tasks[idx] = Some(rec);
    }

    /// Folds a live event into its task's record with the coordinator's fold. `job` is the
    /// job's last polled status: its state (a canceled job's tasks take no events) and its
    /// retry budget, from which a failed attempt is shown as the coordinator will treat it.
    pub(super) fn apply_event(&mut self, ev: &TaskEvent, job: Option<&JobStatus>) {
        let Some(Some(old)) = self.tasks.get(ev.task as usize) else {
            return;
        };
        if let TaskEventKind::Progress { fraction } = ev.kind {
            if ev.attempt >= old.attempt {
                self.progress.insert(ev.task, fraction);
            }
            return;
        }
        let job_state = job.map_or(JobState::Running, |j| j.state);
        match fold::apply_event(old, ev, job_state, |attempt| after_failure(job, attempt)) {
            Applied::Ignored => {}
            Applied::Changed(rec) => self.set_task(*rec),
        }
    }
}

/// The coordinator's retry decision, predicted: a failed attempt within the job's retry
/// budget goes back to pending (when exactly it is released does not matter here, and the
/// next poll brings the real record). The job view opens only on a listed job, so an unknown
/// job is one the coordinator no longer lists: with no budget to go by, the failure shows as
/// the event reported it (red) rather than as a retry that nothing says will come.
fn after_failure(job: Option<&JobStatus>, attempt: u32) -> AfterFailure {
    match job {
        Some(j) if attempt < j.max_retries => AfterFailure::Retry { not_before_ms: 0 },
        _ => AfterFailure::Fail,
    }
}

/// Wall seconds of a rendered task (cache hits and unfinished tasks have none).
pub fn render_secs(rec: &TaskRecord) -> Option<f64> {
    match (rec.state, rec.started_ms, rec.finished_ms) {
        (TaskState::Done, Some(s), Some(f)) if f >= s => Some((f - s) as f64 / 1000.0),
        _ => None,
    }
}
