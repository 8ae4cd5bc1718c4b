//! The terminal's whole state and its one transition, [`update`]. Pure: time arrives in
//! actions (`Tick`, `received_ms`), work leaves as [`Effect`] values, nothing here does I/O,
//! so every behaviour is a unit test and the benchmark can drive it without a farm.

use std::collections::{BTreeMap, HashMap, VecDeque};

use suanli_shared::protocol::api::TasksPage;
use suanli_shared::protocol::{
    JobEvent, JobState, JobStatus, OutputFile, TaskEvent, TaskEventKind, TaskRecord, TaskState,
    WorkerInfo, WorkerState,
};
use suanli_shared::regions::RegionProfile;
use suanli_shared::{ContentHash, JobId, Region, WorkerId};

use crate::action::{Action, Effect, Snapshot};
use crate::api::FarmEvent;
use crate::fmt;
use crate::preview::Thumb;
use crate::theme::Theme;

/// Width of one history bucket (utilization, throughput).
pub const BUCKET_MS: u64 = 5_000;
/// History kept: ten minutes of buckets.
pub const HISTORY_BUCKETS: usize = 120;
/// Buckets behind the utilization gauge and frames per minute: the last minute.
pub const MINUTE_BUCKETS: usize = 12;
/// Event log lines kept.
pub const LOG_LINES: usize = 500;
/// Failures kept per task record when events add them (the coordinator keeps a few too).
const MAX_FAILURES_KEPT: usize = 5;
/// A preview download that has not answered by then no longer holds back the next one.
const PREVIEW_STALE_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    Overview,
    Job,
    Workers,
    Ledger,
}

impl View {
    pub const ALL: [View; 4] = [View::Overview, View::Job, View::Workers, View::Ledger];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Job => "Job",
            View::Workers => "Workers",
            View::Ledger => "Ledger",
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}

/// An operator action waiting for `y`.
#[derive(Debug, Clone, PartialEq)]
pub enum Confirm {
    Cancel { job: JobId, name: String },
    Retry { job: JobId, name: String },
    Drain { region: Region, worker: WorkerId },
}

impl Confirm {
    pub fn question(&self) -> String {
        match self {
            Confirm::Cancel { name, .. } => format!("Cancel job {name}?"),
            Confirm::Retry { name, .. } => format!("Retry the failed tasks of job {name}?"),
            Confirm::Drain { region, worker } => format!("Drain worker {region}/{worker}?"),
        }
    }

    pub fn consequence(&self) -> &'static str {
        match self {
            Confirm::Cancel { .. } => "Running renders stop; pending tasks are dropped.",
            Confirm::Retry { .. } => "Failed and canceled tasks are queued again.",
            Confirm::Drain { .. } => "It takes no new tasks, finishes what it renders, exits.",
        }
    }

    fn effect(&self) -> Effect {
        match self.clone() {
            Confirm::Cancel { job, name } => Effect::Cancel { job, name },
            Confirm::Retry { job, name } => Effect::Retry { job, name },
            Confirm::Drain { region, worker } => Effect::Drain { region, worker },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    /// Nothing heard yet.
    Connecting,
    Up,
    /// The last poll failed; the data on screen is from `last_update_ms`.
    Down {
        error: String,
        since_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub at_ms: u64,
    pub level: Level,
    pub text: String,
}

/// One history bucket: two sums (busy and live slot samples, or frames and nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    pub id: u64,
    pub a: f64,
    pub b: f64,
}

/// A quantity summed per [`BUCKET_MS`], the last [`HISTORY_BUCKETS`] kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    buckets: VecDeque<Bucket>,
}

impl Series {
    pub fn add(&mut self, at_ms: u64, a: f64, b: f64) {
        let id = at_ms / BUCKET_MS;
        if let Some(bucket) = self.buckets.iter_mut().rev().find(|x| x.id == id) {
            bucket.a += a;
            bucket.b += b;
            return;
        }
        if self.buckets.back().is_some_and(|last| last.id > id) {
            // Older than the newest bucket and not kept: too late to count.
            if self.buckets.front().is_some_and(|first| first.id > id) {
                return;
            }
            let at = self.buckets.iter().position(|x| x.id > id).unwrap_or(0);
            self.buckets.insert(at, Bucket { id, a, b });
        } else {
            self.buckets.push_back(Bucket { id, a, b });
        }
        while self.buckets.len() > HISTORY_BUCKETS {
            self.buckets.pop_front();
        }
    }

    /// The last `n` buckets up to the one holding `now_ms`, oldest first; `None` where
    /// nothing was recorded.
    pub fn window(&self, now_ms: u64, n: usize) -> Vec<Option<Bucket>> {
        let last = now_ms / BUCKET_MS;
        let first = (last + 1).saturating_sub(n as u64);
        let mut out = vec![None; n];
        let offset = n as u64 - (last + 1 - first);
        for b in self.buckets.iter().rev() {
            if b.id < first {
                break;
            }
            if b.id <= last {
                out[(offset + b.id - first) as usize] = Some(*b);
            }
        }
        out
    }

    /// Sums of the last `n` buckets up to `now_ms`.
    pub fn sum(&self, now_ms: u64, n: usize) -> (f64, f64) {
        let last = now_ms / BUCKET_MS;
        let first = (last + 1).saturating_sub(n as u64);
        self.buckets
            .iter()
            .filter(|b| (first..=last).contains(&b.id))
            .fold((0.0, 0.0), |(a, b), x| (a + x.a, b + x.b))
    }
}

/// What the terminal remembers about a region between polls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegionHistory {
    /// One sample a second: `a` busy slots, `b` live slots.
    pub util: Series,
    /// Frames rendered (cache hits left out): `a`.
    pub frames: Series,
}

/// A running mean of task durations (seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mean {
    pub sum: f64,
    pub n: u32,
}

impl Mean {
    pub fn add(&mut self, v: f64) {
        self.sum += v;
        self.n += 1;
    }

    pub fn get(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// Counts of loaded task records by state, plus the unloaded ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub unknown: u32,
    pub pending: u32,
    pub queued: u32,
    pub running: u32,
    pub done: u32,
    pub cached: u32,
    pub failed: u32,
    pub canceled: u32,
}

impl Tally {
    fn slot(&mut self, s: Option<TaskState>) -> &mut u32 {
        match s {
            None => &mut self.unknown,
            Some(TaskState::Pending) => &mut self.pending,
            Some(TaskState::Queued) => &mut self.queued,
            Some(TaskState::Running) => &mut self.running,
            Some(TaskState::Done) => &mut self.done,
            Some(TaskState::Cached) => &mut self.cached,
            Some(TaskState::Failed) => &mut self.failed,
            Some(TaskState::Canceled) => &mut self.canceled,
        }
    }
}

/// The open job: its task records (loaded page by page, then kept fresh by events and
/// polls) and the selected task.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub job: JobId,
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
    pub fn new(job: JobId, total: u32) -> Self {
        Self {
            job,
            tasks: vec![None; total as usize],
            tally: Tally {
                unknown: total,
                ..Tally::default()
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

    fn resize(&mut self, total: u32) {
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
        *self.tally.slot(old.as_ref().map(|r| r.state)) -= 1;
        if let Some(d) = old.as_ref().and_then(render_secs) {
            self.durations.sum -= d;
            self.durations.n -= 1;
        }
        *self.tally.slot(Some(rec.state)) += 1;
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

    fn apply_event(&mut self, ev: &TaskEvent) {
        let Some(Some(old)) = self.tasks.get(ev.task as usize) else {
            return;
        };
        if ev.attempt < old.attempt {
            return;
        }
        if let TaskEventKind::Progress { fraction } = ev.kind {
            self.progress.insert(ev.task, fraction);
            return;
        }
        let mut rec = old.clone();
        rec.attempt = ev.attempt;
        rec.worker = Some(ev.worker.clone());
        rec.region = Some(ev.region.clone());
        match &ev.kind {
            TaskEventKind::Started => {
                rec.state = TaskState::Running;
                rec.started_ms = Some(ev.at_ms);
                rec.finished_ms = None;
            }
            TaskEventKind::Progress { .. } => {}
            TaskEventKind::Completed {
                cached,
                started_ms,
                core_seconds,
                outputs,
                bytes_in,
            } => {
                rec.state = if *cached {
                    TaskState::Cached
                } else {
                    TaskState::Done
                };
                rec.started_ms = Some(*started_ms);
                rec.finished_ms = Some(ev.at_ms);
                rec.core_seconds = *core_seconds;
                rec.outputs = outputs.clone();
                rec.bytes_in = *bytes_in;
            }
            TaskEventKind::Failed { failure } => {
                // The coordinator may queue it again; the next poll says so.
                rec.state = TaskState::Failed;
                rec.finished_ms = Some(ev.at_ms);
                rec.failures.push(failure.clone());
                let extra = rec.failures.len().saturating_sub(MAX_FAILURES_KEPT);
                rec.failures.drain(..extra);
            }
        }
        self.set_task(rec);
    }
}

/// Wall seconds of a rendered task (cache hits and unfinished tasks have none).
pub fn render_secs(rec: &TaskRecord) -> Option<f64> {
    match (rec.state, rec.started_ms, rec.finished_ms) {
        (TaskState::Done, Some(s), Some(f)) if f >= s => Some((f - s) as f64 / 1000.0),
        _ => None,
    }
}

/// The frame preview being shown or fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub key: ContentHash,
    pub name: String,
    pub frame: u32,
    pub requested_ms: u64,
    /// `None` while downloading.
    pub image: Option<Result<Thumb, String>>,
}

/// What the background poller should fetch besides the farm snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    /// The open job, whose task records it loads.
    pub job: Option<JobId>,
    pub total: u32,
    /// The selected task: its page is refreshed first.
    pub sel: u32,
}

#[derive(Debug, Clone)]
pub struct State {
    pub now_ms: u64,
    /// When the terminal started: history before it is unknown, not zero.
    pub started_ms: u64,
    /// Terminal size (the job grid's geometry depends on it).
    pub size: (u16, u16),
    pub theme: Theme,
    /// Extra words in the status bar (the demo says what `q` does there).
    pub hint: Option<String>,
    pub view: View,
    pub help: bool,
    pub confirm: Option<Confirm>,
    pub connection: Connection,
    pub last_update_ms: Option<u64>,
    /// Why live events are unavailable, while they are.
    pub events_down: Option<String>,
    pub jobs: Vec<JobStatus>,
    pub selected_job: Option<JobId>,
    pub workers: Vec<WorkerInfo>,
    pub selected_worker: Option<(Region, WorkerId)>,
    /// Region catalog; `None` until the coordinator offers one.
    pub catalog: Option<BTreeMap<Region, RegionProfile>>,
    pub depths: BTreeMap<Region, u64>,
    pub history: BTreeMap<Region, RegionHistory>,
    /// Frames rendered farm-wide per bucket.
    pub farm_frames: Series,
    /// Measured render durations per job, from completion events.
    pub durations: HashMap<JobId, Mean>,
    pub log: VecDeque<LogLine>,
    pub job_view: Option<JobView>,
    pub preview: Option<Preview>,
    /// A one-line message in the status bar until the next key.
    pub flash: Option<String>,
    pub quit: bool,
}

impl State {
    pub fn new(theme: Theme, now_ms: u64, size: (u16, u16)) -> Self {
        Self {
            now_ms,
            started_ms: now_ms,
            size,
            theme,
            hint: None,
            view: View::Overview,
            help: false,
            confirm: None,
            connection: Connection::Connecting,
            last_update_ms: None,
            events_down: None,
            jobs: Vec::new(),
            selected_job: None,
            workers: Vec::new(),
            selected_worker: None,
            catalog: None,
            depths: BTreeMap::new(),
            history: BTreeMap::new(),
            farm_frames: Series::default(),
            durations: HashMap::new(),
            log: VecDeque::new(),
            job_view: None,
            preview: None,
            flash: None,
            quit: false,
        }
    }

    pub fn job(&self, id: &JobId) -> Option<&JobStatus> {
        self.jobs.iter().find(|j| &j.id == id)
    }

    pub fn selected_job_status(&self) -> Option<&JobStatus> {
        self.selected_job.as_ref().and_then(|id| self.job(id))
    }

    pub fn selected_job_index(&self) -> Option<usize> {
        let id = self.selected_job.as_ref()?;
        self.jobs.iter().position(|j| &j.id == id)
    }

    pub fn selected_worker_index(&self) -> Option<usize> {
        let (r, w) = self.selected_worker.as_ref()?;
        self.workers
            .iter()
            .position(|x| &x.region == r && &x.id == w)
    }

    /// A job's name for messages (its short id when unknown).
    pub fn job_name(&self, id: &JobId) -> String {
        match self.job(id) {
            Some(j) => j.name.clone(),
            None => id.as_str().chars().take(10).collect(),
        }
    }

    pub fn interest(&self) -> Interest {
        match (&self.job_view, self.view) {
            (Some(jv), View::Job) => Interest {
                job: Some(jv.job.clone()),
                total: jv.total(),
                sel: jv.sel,
            },
            _ => Interest::default(),
        }
    }

    pub fn log(&mut self, level: Level, text: impl Into<String>) {
        self.log.push_back(LogLine {
            at_ms: self.now_ms,
            level,
            text: text.into(),
        });
        while self.log.len() > LOG_LINES {
            self.log.pop_front();
        }
    }

    /// Mean render seconds per task of a job: from the open job's records when it has more
    /// of them, else from the completions seen live.
    pub fn mean_task_secs(&self, job: &JobId) -> Option<f64> {
        let live = self.durations.get(job).copied().unwrap_or_default();
        let loaded = self
            .job_view
            .as_ref()
            .filter(|jv| &jv.job == job)
            .map(|jv| jv.durations)
            .unwrap_or_default();
        if loaded.n > live.n {
            loaded.get()
        } else {
            live.get()
        }
    }

    fn apply_snapshot(&mut self, snap: Snapshot) {
        let first = self.last_update_ms.is_none();
        if let Connection::Down { .. } = self.connection {
            self.log(Level::Info, "reconnected to the coordinator");
        }
        self.connection = Connection::Up;
        self.last_update_ms = Some(snap.at_ms);
        let mut lines = Vec::new();
        if first {
            lines.push((
                Level::Info,
                format!(
                    "connected: {} workers, {} jobs",
                    snap.workers.len(),
                    snap.jobs.len()
                ),
            ));
        } else {
            let before: HashMap<(&Region, &WorkerId), WorkerState> = self
                .workers
                .iter()
                .map(|w| ((&w.region, &w.id), w.state))
                .collect();
            for w in &snap.workers {
                let name = format!("{}/{}", w.region, w.id);
                match before.get(&(&w.region, &w.id)) {
                    None => lines.push((
                        Level::Info,
                        format!("worker {name} joined ({} slots)", w.slots),
                    )),
                    Some(WorkerState::Lost) if w.state != WorkerState::Lost => {
                        lines.push((Level::Info, format!("worker {name} is back")))
                    }
                    Some(prev) if *prev != WorkerState::Lost && w.state == WorkerState::Lost => {
                        let age = self.now_ms.saturating_sub(w.heartbeat_ms) as f64 / 1000.0;
                        lines.push((
                            Level::Error,
                            format!(
                                "worker {name} lost: no heartbeat for {}",
                                fmt::duration(age)
                            ),
                        ))
                    }
                    Some(prev)
                        if *prev != WorkerState::Draining && w.state == WorkerState::Draining =>
                    {
                        lines.push((Level::Warn, format!("worker {name} is draining")))
                    }
                    _ => {}
                }
            }
        }
        for (level, text) in lines {
            self.log(level, text);
        }
        self.jobs = snap.jobs;
        self.workers = snap.workers;
        self.depths = snap.depths;
        if self.selected_job_index().is_none() {
            self.selected_job = self.jobs.first().map(|j| j.id.clone());
        }
        if self.selected_worker_index().is_none() {
            self.selected_worker = self
                .workers
                .first()
                .map(|w| (w.region.clone(), w.id.clone()));
        }
        if let Some(jv) = self.job_view.as_mut() {
            if let Some(j) = self.jobs.iter().find(|j| j.id == jv.job) {
                jv.resize(j.tasks.total);
            }
        }
    }

    /// Adds one utilization sample per region from the last poll (called once a second).
    fn sample_utilization(&mut self) {
        if self.connection != Connection::Up {
            return;
        }
        let mut per_region: BTreeMap<&Region, (u32, u32)> = BTreeMap::new();
        for w in &self.workers {
            let e = per_region.entry(&w.region).or_default();
            if w.state != WorkerState::Lost {
                e.0 += w.busy.min(w.slots);
                e.1 += w.slots;
            }
        }
        let now = self.now_ms;
        for (region, (busy, live)) in per_region {
            self.history
                .entry(region.clone())
                .or_default()
                .util
                .add(now, busy as f64, live as f64);
        }
    }

    fn apply_event(&mut self, received_ms: u64, event: FarmEvent) {
        match event {
            FarmEvent::Task(ev) => self.apply_task_event(received_ms, ev),
            FarmEvent::Job(ev) => self.apply_job_event(ev),
        }
    }

    fn apply_task_event(&mut self, received_ms: u64, ev: TaskEvent) {
        let name = self.job_name(&ev.job);
        let place = format!("{}/{}", ev.region, ev.worker);
        match &ev.kind {
            TaskEventKind::Started | TaskEventKind::Progress { .. } => {}
            TaskEventKind::Completed {
                cached,
                started_ms,
                outputs,
                ..
            } => {
                let secs = ev.at_ms.saturating_sub(*started_ms) as f64 / 1000.0;
                if *cached {
                    self.log(
                        Level::Info,
                        format!("{place}: {name} task {} was already rendered", ev.task),
                    );
                } else {
                    let frames = outputs.len() as f64;
                    self.history
                        .entry(ev.region.clone())
                        .or_default()
                        .frames
                        .add(received_ms, frames, 0.0);
                    self.farm_frames.add(received_ms, frames, 0.0);
                    self.durations.entry(ev.job.clone()).or_default().add(secs);
                    let what = match outputs.as_slice() {
                        [one] => format!("frame {}", one.frame),
                        many => format!("{} frames", many.len()),
                    };
                    self.log(
                        Level::Info,
                        format!("{place}: {name} {what} in {}", fmt::duration_fine(secs)),
                    );
                }
            }
            TaskEventKind::Failed { failure } => {
                let code = failure
                    .exit_code
                    .map(|c| format!(" (exit {c})"))
                    .unwrap_or_default();
                self.log(
                    Level::Error,
                    format!(
                        "{place}: {name} task {} failed, attempt {}: {}{code}",
                        ev.task,
                        ev.attempt + 1,
                        failure.reason
                    ),
                );
            }
        }
        if let Some(jv) = self.job_view.as_mut().filter(|jv| jv.job == ev.job) {
            jv.apply_event(&ev);
        }
    }

    fn apply_job_event(&mut self, ev: JobEvent) {
        let name = self.job_name(&ev.job);
        let level = match ev.state {
            JobState::Failed => Level::Error,
            JobState::Canceled => Level::Warn,
            // A running job's event with a reason is a notice (a region lost, tasks moved).
            _ if ev.reason.is_some() => Level::Warn,
            _ => Level::Info,
        };
        let reason = ev
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        self.log(
            level,
            format!("job {name} is {}{reason}", ev.state.as_str()),
        );
        if let Some(j) = self.jobs.iter_mut().find(|j| j.id == ev.job) {
            j.state = ev.state;
            if ev.state.is_final() {
                j.finished_ms = Some(ev.at_ms);
            }
            if ev.reason.is_some() {
                j.reason = ev.reason;
            }
        }
    }

    fn load_tasks(&mut self, job: JobId, page: TasksPage) {
        let Some(jv) = self.job_view.as_mut().filter(|jv| jv.job == job) else {
            return;
        };
        jv.resize(page.total);
        for rec in page.tasks {
            jv.set_task(rec);
        }
    }

    /// The frame the preview should show: the selected task's last frame when it has one,
    /// else the last frame rendered.
    fn preview_target(&self) -> Option<(ContentHash, OutputFile)> {
        let jv = self.job_view.as_ref()?;
        let with_outputs = |r: &&TaskRecord| {
            matches!(r.state, TaskState::Done | TaskState::Cached) && !r.outputs.is_empty()
        };
        let rec = jv.selected().filter(with_outputs).or_else(|| {
            jv.last_rendered
                .and_then(|i| jv.tasks[i as usize].as_ref())
                .filter(with_outputs)
        })?;
        let file = rec.outputs.last()?.clone();
        Some((rec.key, file))
    }

    fn follow_preview(&mut self, fx: &mut Vec<Effect>) {
        if self.view != View::Job {
            return;
        }
        let Some((key, file)) = self.preview_target() else {
            return;
        };
        if let Some(p) = &self.preview {
            if p.key == key && p.name == file.name {
                return;
            }
            // One download at a time: the newest target follows when this one lands.
            if p.image.is_none() && self.now_ms < p.requested_ms + PREVIEW_STALE_MS {
                return;
            }
        }
        self.preview = Some(Preview {
            key,
            name: file.name.clone(),
            frame: file.frame,
            requested_ms: self.now_ms,
            image: None,
        });
        fx.push(Effect::LoadPreview { key, file });
    }

    fn open_job(&mut self) {
        let Some(job) = self.selected_job_status() else {
            return;
        };
        let (id, total) = (job.id.clone(), job.tasks.total);
        if self.job_view.as_ref().is_none_or(|jv| jv.job != id) {
            self.job_view = Some(JobView::new(id, total));
            self.preview = None;
        }
        self.view = View::Job;
    }

    fn move_job(&mut self, delta: isize) {
        if self.jobs.is_empty() {
            return;
        }
        let i = self.selected_job_index().unwrap_or(0);
        let j = step(i, delta, self.jobs.len());
        self.selected_job = Some(self.jobs[j].id.clone());
    }

    fn move_worker(&mut self, delta: isize) {
        if self.workers.is_empty() {
            return;
        }
        let i = self.selected_worker_index().unwrap_or(0);
        let j = step(i, delta, self.workers.len());
        let w = &self.workers[j];
        self.selected_worker = Some((w.region.clone(), w.id.clone()));
    }

    fn move_task(&mut self, delta: isize) {
        if let Some(jv) = self.job_view.as_mut() {
            if jv.total() > 0 {
                jv.sel = step(jv.sel as usize, delta, jv.total() as usize) as u32;
            }
        }
    }

    /// Rows of a page in the current view's list.
    fn page_rows(&self) -> isize {
        (self.size.1 as isize - 8).max(1)
    }

    fn navigate(&mut self, action: &Action) {
        let page = self.page_rows();
        let (cols, rows) = crate::ui::job::grid_size(self.size);
        let delta: isize = match (self.view, action) {
            (View::Job, Action::Left) => -1,
            (View::Job, Action::Right) => 1,
            (View::Job, Action::Up) => -(cols as isize),
            (View::Job, Action::Down) => cols as isize,
            (View::Job, Action::PageUp) => -(cols as isize * rows as isize),
            (View::Job, Action::PageDown) => cols as isize * rows as isize,
            (_, Action::Up) => -1,
            (_, Action::Down) => 1,
            (_, Action::PageUp) => -page,
            (_, Action::PageDown) => page,
            (_, Action::Home) => isize::MIN,
            (_, Action::End) => isize::MAX,
            _ => 0,
        };
        if delta == 0 {
            return;
        }
        match self.view {
            View::Overview | View::Ledger => self.move_job(delta),
            View::Workers => self.move_worker(delta),
            View::Job => self.move_task(delta),
        }
    }

    fn switch_view(&mut self, to: View) {
        if to == View::Job {
            // The Job tab shows the selected job.
            if self.selected_job_status().is_some() {
                self.open_job();
            }
        } else {
            self.view = to;
        }
    }

    fn cycle_view(&mut self, forward: bool) {
        let n = View::ALL.len();
        let mut i = self.view.index();
        for _ in 0..n {
            i = if forward {
                (i + 1) % n
            } else {
                (i + n - 1) % n
            };
            let v = View::ALL[i];
            if v != View::Job || self.selected_job_status().is_some() {
                self.switch_view(v);
                return;
            }
        }
    }

    fn ask(&mut self, action: &Action) {
        let confirm = match (action, self.view) {
            (Action::CancelJob | Action::RetryJob, View::Overview | View::Job | View::Ledger) => {
                let job = if self.view == View::Job {
                    self.job_view.as_ref().and_then(|jv| self.job(&jv.job))
                } else {
                    self.selected_job_status()
                };
                let Some(job) = job else {
                    self.flash = Some("no job selected".into());
                    return;
                };
                let (id, name) = (job.id.clone(), job.name.clone());
                if *action == Action::CancelJob {
                    if job.state.is_final() {
                        self.flash = Some(format!("job {name} is already {}", job.state.as_str()));
                        return;
                    }
                    Confirm::Cancel { job: id, name }
                } else {
                    Confirm::Retry { job: id, name }
                }
            }
            (Action::DrainWorker, View::Workers) => {
                let Some((region, worker)) = self.selected_worker.clone() else {
                    self.flash = Some("no worker selected".into());
                    return;
                };
                Confirm::Drain { region, worker }
            }
            (Action::DrainWorker, _) => {
                self.flash = Some("d drains a worker: select one in the Workers view (3)".into());
                return;
            }
            _ => {
                self.flash = Some("c and r act on a job: select one in the Overview (1)".into());
                return;
            }
        };
        self.confirm = Some(confirm);
    }

    fn input(&mut self, action: Action, fx: &mut Vec<Effect>) {
        self.flash = None;
        if action == Action::Quit {
            self.quit = true;
            fx.push(Effect::Quit);
            return;
        }
        if let Some(confirm) = self.confirm.clone() {
            match action {
                Action::Confirm(true) => {
                    self.confirm = None;
                    self.flash = Some(format!("{} sent", confirm_verb(&confirm)));
                    fx.push(confirm.effect());
                }
                Action::Confirm(false) | Action::Back => self.confirm = None,
                _ => {}
            }
            return;
        }
        if self.help {
            if matches!(action, Action::ToggleHelp | Action::Back) {
                self.help = false;
            }
            return;
        }
        match action {
            Action::ToggleHelp => self.help = true,
            Action::NextView => self.cycle_view(true),
            Action::PrevView => self.cycle_view(false),
            Action::ShowView(v) => self.switch_view(v),
            Action::Back => self.view = View::Overview,
            Action::Enter => {
                if matches!(self.view, View::Overview | View::Ledger) {
                    self.open_job();
                }
            }
            Action::CancelJob | Action::RetryJob | Action::DrainWorker => self.ask(&action),
            Action::Up
            | Action::Down
            | Action::Left
            | Action::Right
            | Action::PageUp
            | Action::PageDown
            | Action::Home
            | Action::End => self.navigate(&action),
            _ => {}
        }
    }
}

fn confirm_verb(c: &Confirm) -> String {
    match c {
        Confirm::Cancel { name, .. } => format!("cancel of job {name}"),
        Confirm::Retry { name, .. } => format!("retry of job {name}"),
        Confirm::Drain { region, worker } => format!("drain of worker {region}/{worker}"),
    }
}

/// `i + delta` clamped to `0..len`; `isize::MIN`/`MAX` go to the ends.
fn step(i: usize, delta: isize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let j = (i as isize).saturating_add(delta);
    j.clamp(0, len as isize - 1) as usize
}

/// Folds one action into the state; returns the work the runtime must do.
pub fn update(state: &mut State, action: Action) -> Vec<Effect> {
    let mut fx = Vec::new();
    match action {
        Action::Tick { now_ms } => {
            state.now_ms = state.now_ms.max(now_ms);
            state.sample_utilization();
        }
        Action::Resize { width, height } => state.size = (width, height),
        Action::Polled(snap) => state.apply_snapshot(*snap),
        Action::PollFailed { error, at_ms } => {
            if !matches!(&state.connection, Connection::Down { error: e, .. } if *e == error) {
                state.log(Level::Error, format!("disconnected: {error}"));
            }
            let since_ms = match &state.connection {
                Connection::Down { since_ms, .. } => *since_ms,
                _ => at_ms,
            };
            state.connection = Connection::Down { error, since_ms };
        }
        Action::Catalog(catalog) => {
            state.catalog =
                catalog.map(|list| list.into_iter().map(|p| (p.name.clone(), p)).collect());
        }
        Action::Tasks { job, page } => state.load_tasks(job, page),
        Action::Event { received_ms, event } => state.apply_event(received_ms, *event),
        Action::EventsUp => {
            if state.events_down.take().is_some() {
                state.log(Level::Info, "live events are back");
            }
        }
        Action::EventsDown(error) => {
            if state.events_down.is_none() {
                state.log(Level::Warn, format!("live events unavailable: {error}"));
            }
            state.events_down = Some(error);
        }
        Action::Done(message) => {
            state.log(Level::Info, message.clone());
            state.flash = Some(message);
        }
        Action::Failed(message) => {
            state.log(Level::Error, message.clone());
            state.flash = Some(message);
        }
        Action::Preview { key, name, result } => {
            if let Some(p) = state
                .preview
                .as_mut()
                .filter(|p| p.key == key && p.name == name)
            {
                p.image = Some(result);
            }
        }
        input => state.input(input, &mut fx),
    }
    state.follow_preview(&mut fx);
    fx
}
