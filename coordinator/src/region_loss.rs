//! Region loss: a region with no live worker for `region_lost_after` loses its queued and
//! running tasks, so they can be placed elsewhere instead of waiting on a region that may
//! never come back. Finding them reads each job's index of tasks per region; it never walks
//! the tasks. The actor runs it on its timer.

use std::collections::BTreeMap;

use suanli_shared::nats;
use suanli_shared::{JobId, Region};
use tracing::warn;

use crate::actor::Coordinator;
use crate::state::{self, Job};

/// The queued and running tasks of unfinished jobs held by the regions `is_lost` names, per
/// region, in job then task order.
pub fn stranded(
    jobs: &BTreeMap<JobId, Job>,
    is_lost: impl Fn(&Region) -> bool,
) -> BTreeMap<Region, Vec<(JobId, u32)>> {
    let mut out: BTreeMap<Region, Vec<(JobId, u32)>> = BTreeMap::new();
    for (id, job) in jobs {
        if job.rec.rec.state.is_final() {
            continue;
        }
        for (region, tasks) in job.in_flight_by_region() {
            if is_lost(region) {
                out.entry(region.clone())
                    .or_default()
                    .extend(tasks.iter().map(|t| (id.clone(), *t)));
            }
        }
    }
    out
}

impl Coordinator {
    /// Regions that have had no live worker for `region_lost_after` lose their queued and
    /// running tasks: the region's queue is purged and the tasks go back to the backlog, to be
    /// placed elsewhere (or to wait, when the job allows only that region).
    pub(crate) async fn withdraw_from_lost_regions(&mut self, now: u64) {
        let lost_after = self.config.region_lost_after.as_millis() as u64;
        let is_lost = |region: &Region| {
            let last = self
                .last_live
                .get(region)
                .copied()
                .unwrap_or(self.started_ms);
            now.saturating_sub(last) > lost_after
        };
        let stranded = stranded(&self.jobs, is_lost);
        for (region, tasks) in stranded {
            if let Err(e) = self
                .farm
                .tasks
                .purge()
                .filter(nats::task_subject(&region))
                .await
            {
                warn!(region = %region, error = %e, "cannot purge a lost region's queue; will retry");
                continue;
            }
            let mut moved: BTreeMap<JobId, u32> = BTreeMap::new();
            for (job, task) in tasks {
                let next = state::withdrawn(&self.jobs[&job].tasks()[task as usize].rec);
                if let Err(e) = self.set_task(&job, next).await {
                    warn!(error = %format!("{e:#}"), "cannot withdraw a task; will retry");
                    continue;
                }
                *moved.entry(job).or_default() += 1;
            }
            self.metrics
                .rereleased("region_lost", moved.values().map(|n| u64::from(*n)).sum());
            for (job, n) in moved {
                let reason = format!(
                    "region {region} lost (no live worker for {:?}): {n} task(s) withdrawn to be placed elsewhere",
                    self.config.region_lost_after
                );
                warn!(job = %job, region = %region, tasks = n, "region lost: tasks withdrawn");
                let state = self.jobs[&job].rec.rec.state;
                self.publish_job_event(&job, state, Some(reason)).await;
            }
        }
    }
}
