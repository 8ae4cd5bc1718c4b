//! Which tasks to release onto which region's queue, given free slots. Pure: the actor
//! gathers the inputs from its state and the live workers, and publishes what this returns.
//!
//! Rules: a region never holds more released-but-unfinished tasks than its live slots plus a
//! small prefetch; higher priority first; among equal priorities the job with the fewest tasks
//! in flight goes next (fair share), then the oldest; a task goes to the allowed region with
//! the most free slots.

use std::collections::BTreeMap;

use suanli_shared::Region;

/// One job's view for planning.
#[derive(Debug, Clone)]
pub struct JobView {
    pub priority: i32,
    pub created_ms: u64,
    /// Tasks released and not finished.
    pub in_flight: u32,
    /// Regions allowed; empty means any.
    pub allowed: Vec<Region>,
    /// Task indices ready to release, in order.
    pub ready: Vec<u32>,
}

/// A decision: release task `task` of job number `job` (index into the input) to `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub job: usize,
    pub task: u32,
    pub region: Region,
}

/// Plans releases. `free` is the number of tasks each region may still take; it is consumed.
pub fn plan(jobs: &[JobView], free: &mut BTreeMap<Region, i64>) -> Vec<Release> {
    let mut in_flight: Vec<u32> = jobs.iter().map(|j| j.in_flight).collect();
    let mut next: Vec<usize> = vec![0; jobs.len()];
    let mut out = Vec::new();
    loop {
        let mut best: Option<(usize, Region)> = None;
        for (i, job) in jobs.iter().enumerate() {
            if next[i] >= job.ready.len() {
                continue;
            }
            let Some(region) = best_region(job, free) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((b, _)) => {
                    let (a, bj) = (job, &jobs[*b]);
                    (-a.priority, in_flight[i], a.created_ms, i)
                        < (-bj.priority, in_flight[*b], bj.created_ms, *b)
                }
            };
            if better {
                best = Some((i, region));
            }
        }
        let Some((i, region)) = best else {
            return out;
        };
        let task = jobs[i].ready[next[i]];
        next[i] += 1;
        in_flight[i] += 1;
        if let Some(f) = free.get_mut(&region) {
            *f -= 1;
        }
        out.push(Release {
            job: i,
            task,
            region,
        });
    }
}

fn best_region(job: &JobView, free: &BTreeMap<Region, i64>) -> Option<Region> {
    free.iter()
        .filter(|(r, f)| **f > 0 && (job.allowed.is_empty() || job.allowed.contains(r)))
        // Most free slots first; ties go to the first name, so plans are deterministic.
        .max_by(|(ra, fa), (rb, fb)| fa.cmp(fb).then(rb.cmp(ra)))
        .map(|(r, _)| r.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Region {
        s.parse().unwrap()
    }

    fn job(priority: i32, created_ms: u64, ready: u32, allowed: &[&str]) -> JobView {
        JobView {
            priority,
            created_ms,
            in_flight: 0,
            allowed: allowed.iter().map(|a| r(a)).collect(),
            ready: (0..ready).collect(),
        }
    }

    #[test]
    fn never_exceeds_free_slots_and_spreads() {
        let mut free = BTreeMap::from([(r("a"), 2), (r("b"), 3)]);
        let out = plan(&[job(0, 1, 10, &[])], &mut free);
        assert_eq!(out.len(), 5);
        assert_eq!(out.iter().filter(|x| x.region == r("a")).count(), 2);
        assert!(free.values().all(|f| *f == 0));
        assert_eq!(
            out.iter().map(|x| x.task).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn priority_first_then_fair_share() {
        let mut free = BTreeMap::from([(r("a"), 4)]);
        let jobs = [job(0, 1, 10, &[]), job(5, 2, 1, &[]), job(0, 3, 10, &[])];
        let out = plan(&jobs, &mut free);
        let order: Vec<usize> = out.iter().map(|x| x.job).collect();
        assert_eq!(
            order,
            [1, 0, 2, 0],
            "high priority, then alternate equal jobs"
        );
    }

    #[test]
    fn allowed_regions_are_respected() {
        let mut free = BTreeMap::from([(r("a"), 5), (r("b"), 1)]);
        let out = plan(&[job(0, 1, 3, &["b"])], &mut free);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].region, r("b"));
        let mut none = BTreeMap::new();
        assert!(plan(&[job(0, 1, 3, &[])], &mut none).is_empty());
    }
}
