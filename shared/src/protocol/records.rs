//! The lasting records in KV: jobs (`suanli_jobs`), tasks (`suanli_tasks`), workers
//! (`suanli_workers`) and the coordinator lease (`suanli_lease`), with their states.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::clock::now_ms;
use super::events::Failure;
use super::manifest::OutputFile;
use super::spec::JobSpec;
use crate::frames::FrameChunk;
use crate::hash::ContentHash;
use crate::names::{JobId, Region, WorkerId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Canceled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// In the coordinator's backlog.
    Pending,
    /// Released onto a region's queue, not started yet.
    Queued,
    Running,
    Done,
    /// Done without rendering: its output was already committed.
    Cached,
    Failed,
    Canceled,
}

impl TaskState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Cached | TaskState::Failed | TaskState::Canceled
        )
    }
}

/// A job in the `suanli_jobs` bucket (key: job id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    pub n_tasks: u32,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    pub reason: Option<String>,
    /// Workers that failed this job too often; they take none of its tasks.
    #[serde(default)]
    pub blocklist: Vec<Blocklisted>,
    /// Bytes of the job's inputs (the manifest's total): what placement weighs as transfer
    /// into a region that does not hold them yet.
    #[serde(default)]
    pub input_bytes: u64,
}

/// A worker barred from one job after failing it [`BLOCKLIST_AFTER`] times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocklisted {
    pub region: Region,
    pub worker: WorkerId,
    pub failures: u32,
    pub at_ms: u64,
}

/// Failures of one job on one worker after which that worker is blocklisted for the job.
pub const BLOCKLIST_AFTER: u32 = 3;

/// A task in the `suanli_tasks` bucket (key: `<job>.<task index>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub job: JobId,
    pub task: u32,
    pub key: ContentHash,
    pub chunk: FrameChunk,
    pub state: TaskState,
    /// Attempt number of the current or last run (0-based).
    pub attempt: u32,
    pub region: Option<Region>,
    pub worker: Option<WorkerId>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub core_seconds: f64,
    /// Earliest time the task may be released again (retry backoff).
    pub not_before_ms: u64,
    /// Failures so far, oldest first (the last few are kept).
    pub failures: Vec<Failure>,
    pub outputs: Vec<OutputFile>,
    /// Input bytes the successful run downloaded into its region.
    #[serde(default)]
    pub bytes_in: u64,
    /// Times this attempt was put on a queue. Part of the publish's message id, so a task
    /// withdrawn from a lost region can be published again while a publish repeated after a
    /// crash is still dropped as a duplicate.
    #[serde(default)]
    pub releases: u32,
    /// The GPUs the successful run held (the ledger's GPU-hours); `None` for a CPU task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<super::events::GpuUse>,
}

impl TaskRecord {
    /// A task as submit creates it: in `state` (pending, or cached when its output is already
    /// committed, finished at `finished_ms`), attempt 0, never run.
    pub fn new(
        job: JobId,
        task: u32,
        key: ContentHash,
        chunk: FrameChunk,
        state: TaskState,
        finished_ms: Option<u64>,
    ) -> Self {
        Self {
            job,
            task,
            key,
            chunk,
            state,
            attempt: 0,
            region: None,
            worker: None,
            started_ms: None,
            finished_ms,
            core_seconds: 0.0,
            not_before_ms: 0,
            failures: vec![],
            outputs: vec![],
            bytes_in: 0,
            releases: 0,
            gpu: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Idle,
    Rendering,
    Draining,
    /// Derived by readers from an old heartbeat; never written by a worker.
    Lost,
}

/// A task a worker is rendering right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentTask {
    pub job: JobId,
    pub task: u32,
    pub chunk: FrameChunk,
    pub fraction: f32,
}

/// A worker's heartbeat in the `suanli_workers` bucket (key: `<region>.<worker>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub region: Region,
    pub slots: u32,
    pub busy: u32,
    pub state: WorkerState,
    /// Renderer kind -> version this worker can run (and allows: `command` is `any` where
    /// raw commands run, `profiles` where only [`WorkerInfo::profiles`] do).
    pub renderers: BTreeMap<String, String>,
    /// The command profiles this worker defines (`--command-profile`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    pub host: String,
    pub pid: u32,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
    pub tasks_done: u64,
    pub core_seconds: f64,
    pub current: Vec<CurrentTask>,
    /// Cores, memory, GPUs and tags this worker offers its tasks; `None` in records from
    /// workers that predate resources (they take only jobs that ask for nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<super::resources::Resources>,
    /// GPUs its running tasks hold now (of `resources.gpus`).
    #[serde(default)]
    pub gpus_busy: u32,
}

impl WorkerInfo {
    /// The state an observer should show, given how old the last heartbeat is.
    pub fn observed_state(&self, now_ms: u64, lost_after_ms: u64) -> WorkerState {
        if now_ms.saturating_sub(self.heartbeat_ms) > lost_after_ms {
            WorkerState::Lost
        } else {
            self.state
        }
    }
}

/// Who holds the coordinator lease, as written in `suanli_lease` (key `coordinator`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseHolder {
    pub host: String,
    pub pid: u32,
    /// Distinguishes two coordinators in one process (tests) and restarts that reuse a pid.
    pub instance: String,
    pub renewed_ms: u64,
}

impl LeaseHolder {
    /// A new holder identity for this process.
    pub fn this_process() -> Self {
        Self {
            host: crate::sys::hostname(),
            pid: std::process::id(),
            instance: ulid::Ulid::new().to_string(),
            renewed_ms: now_ms(),
        }
    }

    /// The same holder (host, pid and instance), whenever it renewed.
    pub fn same(&self, other: &LeaseHolder) -> bool {
        self.host == other.host && self.pid == other.pid && self.instance == other.instance
    }

    /// This holder ran on `me`'s host and its process is gone.
    pub fn died_here(&self, me: &LeaseHolder) -> bool {
        self.host == me.host && self.pid != me.pid && !crate::sys::pid_alive(self.pid)
    }
}
