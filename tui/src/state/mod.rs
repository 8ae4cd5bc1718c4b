//! The terminal's whole state and its one transition, [`update`]. Pure: time arrives in
//! actions (`Tick`, `received_ms`), work leaves as [`Effect`] values, nothing here does I/O,
//! so every behaviour is a unit test and the benchmark can drive it without a farm.
//!
//! This module holds the state and what the farm's polls and events do to it; the open job's
//! records live in `job_view`, history in `series`, key handling in `nav`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use suanli_shared::protocol::api::TasksPage;
use suanli_shared::protocol::{
    JobEvent, JobState, JobStatus, OutputFile, TaskEvent, TaskEventKind, TaskRecord, TaskState,
    WorkerInfo, WorkerState,
};
use suanli_shared::regions::RegionProfile;
use suanli_shared::{ContentHash, JobId, Region, Studio, WorkerId};

use crate::action::{Action, Effect, Snapshot};
use crate::api::FarmEvent;
use crate::fmt;
use crate::preview::Thumb;
use crate::theme::Theme;
use crate::view::View;

mod job_view;
mod nav;
mod series;

pub use job_view::{render_secs, JobView, Tally};
pub use nav::Confirm;
pub use series::{Bucket, Mean, RegionHistory, Series, BUCKET_MS, HISTORY_BUCKETS, MINUTE_BUCKETS};

/// Event log lines kept.
pub const LOG_LINES: usize = 500;
/// A preview download that has not answered by then no longer holds back the next one.
const PREVIEW_STALE_MS: u64 = 5_000;

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
            let status = self.jobs.iter().find(|j| j.id == ev.job);
            jv.apply_event(&ev, status);
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

    /// The frame the preview should show, with the studio it is stored under: the selected
    /// task's last frame when it has one, else the last frame rendered.
    fn preview_target(&self) -> Option<(Studio, ContentHash, OutputFile)> {
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
        Some((jv.studio.clone(), rec.key, file))
    }

    fn follow_preview(&mut self, fx: &mut Vec<Effect>) {
        if self.view != View::Job {
            return;
        }
        let Some((studio, key, file)) = self.preview_target() else {
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
        fx.push(Effect::LoadPreview { studio, key, file });
    }
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
