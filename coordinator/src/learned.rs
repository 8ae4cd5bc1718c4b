//! What placement learns from finished tasks, and remembers between dispatch rounds: each
//! region's speed per renderer, the input sets each region holds or is fetching, and each
//! job's mean task time. It lives apart from the actor because it is pure bookkeeping, rebuilt
//! from the task records at start-up and unit-tested on its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use suanli_shared::protocol::JobRecord;
use suanli_shared::{ContentHash, JobId, Region};

use crate::placement;

/// What placement learns from finished tasks.
#[derive(Default)]
pub struct Learned {
    /// Each region's speed per renderer.
    pub speeds: placement::SpeedBook,
    /// Input manifests each region holds (a task with them finished there).
    pub held: BTreeMap<Region, BTreeSet<ContentHash>>,
    /// Per job: (sum of wall seconds, sum of core-seconds, tasks) of rendered tasks.
    task_secs: HashMap<JobId, (f64, f64, u32)>,
    /// Input fetches placement started: region -> manifest -> (when it should have arrived,
    /// ms; when to stop expecting it, ms). Cleared when a task with those inputs finishes
    /// there.
    arriving: HashMap<Region, BTreeMap<ContentHash, (u64, u64)>>,
}

impl Learned {
    /// Folds one rendered task in: the region now holds the job's inputs, and its speed is
    /// the job's mean task time so far over this task's.
    pub fn record(&mut self, rec: &JobRecord, region: &Region, wall_secs: f64, core_seconds: f64) {
        if rec.input_bytes > 0 {
            self.held
                .entry(region.clone())
                .or_default()
                .insert(rec.spec.inputs);
            if let Some(a) = self.arriving.get_mut(region) {
                a.remove(&rec.spec.inputs);
            }
        }
        let entry = self.task_secs.entry(rec.id.clone()).or_default();
        if entry.2 > 0 {
            let expected = entry.0 / entry.2 as f64;
            self.speeds
                .record(region, rec.spec.renderer.kind(), expected, wall_secs);
        }
        entry.0 += wall_secs;
        entry.1 += core_seconds;
        entry.2 += 1;
    }

    /// Fetches still under way into `region`: seconds until each arrives (0 when overdue),
    /// and until the region's link is free. Forgets fetches long overdue.
    pub fn fetches(&mut self, region: &Region, now: u64) -> (BTreeMap<ContentHash, f64>, f64) {
        let Some(a) = self.arriving.get_mut(region) else {
            return (BTreeMap::new(), 0.0);
        };
        a.retain(|_, (_, give_up)| *give_up > now);
        let secs: BTreeMap<ContentHash, f64> = a
            .iter()
            .map(|(h, (due, _))| (*h, due.saturating_sub(now) as f64 / 1000.0))
            .collect();
        let busy = secs.values().copied().fold(0.0, f64::max);
        (secs, busy)
    }

    /// Remembers the fetches a plan started (`arriving` after [`crate::dispatch::plan`]).
    pub fn started_fetches(
        &mut self,
        region: &Region,
        arriving: &BTreeMap<ContentHash, f64>,
        now: u64,
    ) {
        let held = self.held.get(region);
        let a = self.arriving.entry(region.clone()).or_default();
        for (h, secs) in arriving {
            if held.is_some_and(|held| held.contains(h)) || a.contains_key(h) {
                continue;
            }
            let due = now + (secs * 1000.0) as u64;
            // A fetch this late has failed or its worker is gone: stop counting on it.
            let give_up = due + ((secs * 2000.0) as u64).max(60_000);
            a.insert(*h, (due, give_up));
        }
    }

    /// What one task of the job is expected to take at speed 1.
    pub fn needs(&self, rec: &JobRecord) -> placement::TaskNeeds {
        let mut needs = placement::TaskNeeds {
            input_bytes: rec.input_bytes,
            gpus: rec.spec.requirements.gpus,
            ..Default::default()
        };
        if let Some((wall, core, n)) = self.task_secs.get(&rec.id).filter(|t| t.2 > 0) {
            needs.wall_seconds = (wall / *n as f64).max(0.001);
            needs.core_seconds = (core / *n as f64).max(0.001);
        }
        needs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::job_record as job;

    #[test]
    fn fetches_a_plan_started_count_down_until_a_task_lands_or_they_are_long_overdue() {
        let mut learned = Learned::default();
        let guian: Region = "guian".parse().unwrap();
        let rec = job(5_000_000_000);
        let h = rec.spec.inputs;
        learned.started_fetches(&guian, &BTreeMap::from([(h, 40.0)]), 1_000);
        let (secs, busy) = learned.fetches(&guian, 11_000);
        assert_eq!((secs[&h], busy), (30.0, 30.0), "10 s of 40 s gone");
        // Planned again: the fetch already under way is not restarted.
        learned.started_fetches(&guian, &BTreeMap::from([(h, 40.0)]), 11_000);
        assert_eq!(learned.fetches(&guian, 11_000).0[&h], 30.0);
        // Overdue: arriving any moment, until long overdue (twice the estimate, at least 60 s).
        assert_eq!(learned.fetches(&guian, 50_000).0[&h], 0.0);
        assert!(learned.fetches(&guian, 121_001).0.is_empty());
        // A task that finished there means the region holds the inputs.
        learned.started_fetches(&guian, &BTreeMap::from([(h, 40.0)]), 200_000);
        learned.record(&rec, &guian, 1.0, 1.0);
        assert!(learned.fetches(&guian, 200_000).0.is_empty());
        assert!(learned.held[&guian].contains(&h));
        learned.started_fetches(&guian, &BTreeMap::from([(h, 40.0)]), 200_000);
        assert!(
            learned.fetches(&guian, 200_000).0.is_empty(),
            "held inputs are not fetched"
        );
    }

    #[test]
    fn speeds_and_task_needs_come_from_rendered_tasks() {
        let mut learned = Learned::default();
        let (fast, slow): (Region, Region) = ("fast".parse().unwrap(), "slow".parse().unwrap());
        let rec = job(0);
        assert_eq!(
            learned.needs(&rec).wall_seconds,
            placement::TaskNeeds::default().wall_seconds
        );
        learned.record(&rec, &slow, 10.0, 10.0);
        learned.record(&rec, &fast, 5.0, 5.0);
        assert!(learned.speeds.factor(&fast, "builtin") > 1.5);
        assert_eq!(learned.needs(&rec).wall_seconds, 7.5);
        assert!(
            learned.held.is_empty(),
            "a job without inputs leaves nothing held"
        );
    }
}
