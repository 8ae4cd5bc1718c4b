//! What `status` shows: task and frame counts, per-region figures (the ledger's rows) and
//! the failures a studio needs to read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::events::Failure;
use super::records::{Blocklisted, JobState, TaskState};
use crate::names::{JobId, Studio};

/// Counts per task state, as shown by `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub total: u32,
    pub pending: u32,
    pub queued: u32,
    pub running: u32,
    /// Tasks finished, rendered or cached.
    pub done: u32,
    pub failed: u32,
    /// Tasks finished from the cache (a subset of `done`).
    pub cached: u32,
    pub canceled: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameCounts {
    pub total: u32,
    /// Frames finished, rendered or cached.
    pub done: u32,
    pub failed: u32,
    pub cached: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionFigures {
    pub frames_done: u32,
    pub core_seconds: f64,
    /// Input bytes moved from the store into the region.
    pub bytes_in: u64,
    /// Busy GPU seconds (wall seconds x GPUs held), all models.
    #[serde(default)]
    pub gpu_seconds: f64,
    /// The same by GPU model (per-model prices); a handful of entries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpu_models: BTreeMap<String, f64>,
    /// Compute at the region's price per core-hour, GPU time at its price per GPU-hour (per
    /// model where the catalog says), plus egress for `bytes_in`, in the catalog's currency
    /// (0 for regions the catalog does not name).
    #[serde(default)]
    pub cost: f64,
    /// Facility energy: (busy core-hours x watts per core + busy GPU-hours x watts per GPU)
    /// x PUE.
    #[serde(default)]
    pub energy_kwh: f64,
    #[serde(default)]
    pub carbon_kg: f64,
}

/// A failed task as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub task: u32,
    pub frames: String,
    pub state: TaskState,
    #[serde(flatten)]
    pub failure: Failure,
}

/// `suanli status JOB --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: JobId,
    pub name: String,
    /// The studio that owns the job (the subject its events go to).
    #[serde(default)]
    pub studio: Studio,
    pub state: JobState,
    pub priority: i32,
    pub renderer: String,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    pub reason: Option<String>,
    pub frames: FrameCounts,
    pub tasks: TaskCounts,
    pub regions: BTreeMap<String, RegionFigures>,
    /// The last failure of each task that failed at least once (the first
    /// [`MAX_FAILURES_SHOWN`]; `failures_total` counts them all).
    pub failures: Vec<TaskFailure>,
    pub failures_total: u32,
    /// Workers barred from this job, and why.
    #[serde(default)]
    pub blocklist: Vec<Blocklisted>,
    /// Retries each task gets after its first attempt fails (from the spec), so a reader of
    /// events can tell a failed attempt that will be retried from a failed task.
    #[serde(default)]
    pub max_retries: u32,
    /// Why the job's waiting tasks cannot run now: no live worker allows its renderer (or its
    /// command profile). Set by the coordinator from the workers' records when `status` is
    /// asked; `None` when some live worker would run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The job's studio's spend this month against its budget, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,
    /// What each task needs of a worker (from the spec), so `status` can show it.
    #[serde(
        default,
        skip_serializing_if = "super::resources::Requirements::is_empty"
    )]
    pub requirements: super::resources::Requirements,
    /// Per region pre-staging the job's inputs: how much of them is there already.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs_in: BTreeMap<String, super::stage::InputPresence>,
}

/// A studio's spend in a calendar month against its budget, priced by the ledger's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    pub studio: Studio,
    /// The calendar month (UTC), `2026-11`.
    pub month: String,
    /// Spent this month, in the region catalog's currency.
    pub spent: f64,
    /// The month's budget.
    pub budget: f64,
    pub currency: String,
    /// What happens at the budget.
    pub at_limit: crate::studios::BudgetAction,
    /// Its releases are stopped (spent plus what its running tasks are expected to cost has
    /// reached the budget, under `stop` or `cancel`).
    pub stopped: bool,
}

impl BudgetStatus {
    /// Spent as a fraction of the budget (1.0 at the budget; infinite for a budget of 0 with
    /// any spend).
    pub fn fraction(&self) -> f64 {
        if self.budget > 0.0 {
            self.spent / self.budget
        } else if self.spent > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }
}

/// How many task failures `status` lists.
pub const MAX_FAILURES_SHOWN: usize = 50;
