//! What a simulation run yields: plain figures per scenario, policy, region and job, with no
//! formatting (the `suanli` binary prints them as tables or JSON).

use std::time::Duration;

use serde::Serialize;
use suanli_shared::protocol::Policy;

/// One region's figures after a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionReport {
    pub name: String,
    pub slots: u32,
    pub tasks: u64,
    pub core_hours: f64,
    pub cost: f64,
    pub energy_kwh: f64,
    pub carbon_kg: f64,
    /// Input bytes moved into the region, in GB.
    pub gb_in: f64,
    /// Share of slot time spent rendering, over the makespan.
    pub utilization: f64,
    /// GPUs in the region, and the GPU-hours its tasks held.
    pub gpus: u32,
    pub gpu_hours: f64,
    /// Share of GPU time held by tasks, over the makespan (0 without GPUs).
    pub gpu_utilization: f64,
}

/// One job's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobReport {
    pub name: String,
    pub tasks: u32,
    pub done: u32,
    /// Seconds from the start of the simulation to the job's submission.
    pub submitted_s: f64,
    /// Seconds from the start of the simulation to its last task's end.
    pub finished_s: Option<f64>,
    /// Seconds from the start of the simulation to the deadline.
    pub due_s: Option<f64>,
    pub met_deadline: Option<bool>,
    pub cost: f64,
}

/// One studio's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudioReport {
    pub name: String,
    pub weight: f64,
    pub tasks: u64,
    pub done: u64,
    /// Its part of all render time (slot-seconds) over the run.
    pub share: f64,
    /// Its part of the render time released while every studio had work to release (no
    /// studio idle, finished or stopped): the weighted fair share at work. `None` when there
    /// never was such a time.
    pub contended_share: Option<f64>,
    /// Seconds from the start of the simulation to its last job's last task; `None` when some
    /// of its work never finished (its budget stopped it).
    pub makespan_s: Option<f64>,
    /// What it spent (compute and egress, at the regions' prices).
    pub spend: f64,
    pub budget: Option<f64>,
    /// Its budget stopped its releases at some point.
    pub stopped: bool,
}

/// What one policy did with one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    pub scenario: String,
    pub policy: Policy,
    pub currency: String,
    /// Seconds until the last task ended.
    pub makespan_s: f64,
    pub cost: f64,
    pub energy_kwh: f64,
    pub carbon_kg: f64,
    pub gb_moved: f64,
    pub gpu_hours: f64,
    /// Mean of each job's time from submission to its last frame.
    pub mean_turnaround_s: f64,
    pub tasks_done: u64,
    pub tasks_total: u64,
    pub regions: Vec<RegionReport>,
    pub jobs: Vec<JobReport>,
    /// Per studio, in name order.
    pub studios: Vec<StudioReport>,
    /// Events processed and `plan` calls made (a measure of the simulation's own work).
    pub events: u64,
    pub plan_calls: u64,
}

/// One policy's report and how long the simulation itself took to run it.
#[derive(Debug, Clone)]
pub struct PolicyRun {
    pub report: SimReport,
    /// Wall-clock time of [`super::run_scenario`] for this policy.
    pub wall: Duration,
}

impl SimReport {
    /// Whether `other` is better than this run on cost, carbon and makespan all at once: no one
    /// choosing between the two policies would take this one.
    pub fn dominated_by(&self, other: &SimReport) -> bool {
        other.cost < self.cost
            && other.carbon_kg < self.carbon_kg
            && other.makespan_s < self.makespan_s
    }
}

/// The runs some other run dominates, each with the first that does: `(dominated, by)`.
pub fn dominated(reports: &[&SimReport]) -> Vec<(Policy, Policy)> {
    reports
        .iter()
        .filter_map(|r| {
            reports
                .iter()
                .find(|o| r.dominated_by(o))
                .map(|o| (r.policy, o.policy))
        })
        .collect()
}
