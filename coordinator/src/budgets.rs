//! Studio budgets: what each studio has spent this calendar month (UTC), charged task by task
//! as tasks are committed, at the ledger's prices ([`suanli_shared::ledger::task_cost`]); the
//! thresholds a charge crosses (80 %, 100 %); and which studios' releases are stopped.
//!
//! A studio under `stop` (or `cancel`) stops releasing when what it has spent plus what its
//! tasks in flight are expected to cost (each job's mean cost per task so far) reaches the
//! budget, so the month ends within about one task of it, whatever the number of slots. The
//! spend is rebuilt from the task records when a coordinator starts; the month rolls over at
//! midnight UTC on its first day. Pure: the actor charges, publishes and cancels.

use std::collections::{BTreeMap, BTreeSet};

use suanli_shared::protocol::{BudgetStatus, JobRecord, TaskRecord, TaskState};
use suanli_shared::regions::RegionCatalog;
use suanli_shared::studios::{
    month_name, month_of, thresholds_crossed, BudgetAction, StudioCatalog,
};
use suanli_shared::{JobId, Studio};

/// The month's spend per studio and each job's mean task cost.
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    /// The month being counted ([`month_of`]).
    month: u32,
    spent: BTreeMap<Studio, f64>,
    /// Per job: cost of its committed tasks (all months) and how many, for its mean.
    jobs: BTreeMap<JobId, (f64, u32)>,
}

/// A threshold a charge crossed.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub percent: u32,
    pub status: BudgetStatus,
}

impl Budgets {
    pub fn new(now_ms: u64) -> Self {
        Self {
            month: month_of(now_ms),
            ..Self::default()
        }
    }

    /// Starts a new month's count when `now_ms` is in a later month.
    pub fn roll(&mut self, now_ms: u64) {
        let month = month_of(now_ms);
        if month > self.month {
            self.month = month;
            self.spent.clear();
        }
    }

    /// What a committed task cost, priced by the ledger's model; 0 for a cache hit or a task
    /// not done.
    pub fn cost_of(task: &TaskRecord, catalog: &RegionCatalog) -> f64 {
        match (&task.state, &task.region) {
            (TaskState::Done, Some(region)) => suanli_shared::ledger::task_cost(
                &catalog.profile(region),
                task.core_seconds,
                task.bytes_in,
            ),
            _ => 0.0,
        }
    }

    /// Charges `cost`, spent by a task of `job` that finished at `at_ms`, to the job's studio.
    /// Returns the studio's spend this month before and after (equal when the task finished in
    /// another month).
    pub fn charge(&mut self, job: &JobRecord, cost: f64, at_ms: u64) -> (f64, f64) {
        let mean = self.jobs.entry(job.id.clone()).or_default();
        mean.0 += cost;
        mean.1 += 1;
        let spent = self.spent.entry(job.spec.studio.clone()).or_default();
        let before = *spent;
        if month_of(at_ms) == self.month {
            *spent += cost;
        }
        (before, *spent)
    }

    /// The studio's spend this month.
    pub fn spent(&self, studio: &Studio) -> f64 {
        self.spent.get(studio).copied().unwrap_or(0.0)
    }

    /// The job's mean cost per committed task, when it has committed one.
    pub fn mean_task_cost(&self, job: &JobId) -> Option<f64> {
        self.jobs
            .get(job)
            .filter(|(_, n)| *n > 0)
            .map(|(cost, n)| cost / f64::from(*n))
    }

    /// The thresholds crossed going from `before` to `after` for `studio`, with its status.
    pub fn crossings(
        &self,
        studio: &Studio,
        before: f64,
        after: f64,
        studios: &StudioCatalog,
        currency: &str,
        stopped: bool,
    ) -> Vec<Crossing> {
        let Some(status) = self.status(studio, studios, currency, stopped) else {
            return Vec::new();
        };
        thresholds_crossed(before, after, status.budget)
            .into_iter()
            .map(|percent| Crossing {
                percent,
                status: status.clone(),
            })
            .collect()
    }

    /// The studio's month against its budget; `None` when it has no budget.
    pub fn status(
        &self,
        studio: &Studio,
        studios: &StudioCatalog,
        currency: &str,
        stopped: bool,
    ) -> Option<BudgetStatus> {
        let terms = studios.get(studio)?;
        Some(BudgetStatus {
            studio: studio.clone(),
            month: month_name(self.month),
            spent: self.spent(studio),
            budget: terms.budget_per_month?,
            currency: currency.to_string(),
            at_limit: terms.at_limit,
            stopped,
        })
    }

    /// Studios whose releases stop now: under `stop` or `cancel`, spent plus the expected cost
    /// of their tasks in flight (`in_flight`: per job, its studio and tasks in flight) at or
    /// past the budget. Costs a step per job, not per task.
    pub fn stopped<'a>(
        &self,
        studios: &StudioCatalog,
        in_flight: impl IntoIterator<Item = (&'a JobId, &'a Studio, u32)>,
    ) -> BTreeSet<Studio> {
        let mut projected: BTreeMap<&Studio, f64> = BTreeMap::new();
        for (job, studio, n) in in_flight {
            let limited = studios
                .get(studio)
                .is_some_and(|t| t.budget_per_month.is_some() && t.at_limit != BudgetAction::Warn);
            if limited {
                *projected
                    .entry(studio)
                    .or_insert_with(|| self.spent(studio)) +=
                    f64::from(n) * self.mean_task_cost(job).unwrap_or(0.0);
            }
        }
        studios
            .studios()
            .filter(|t| t.at_limit != BudgetAction::Warn)
            .filter_map(|t| {
                let budget = t.budget_per_month?;
                let total = projected
                    .get(&t.name)
                    .copied()
                    .unwrap_or_else(|| self.spent(&t.name));
                (total >= budget).then(|| t.name.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_shared::studios::StudioTerms;

    fn studio(name: &str) -> Studio {
        name.parse().unwrap()
    }

    fn job(studio_name: &str) -> JobRecord {
        let mut rec = crate::state::tests::job_record(0);
        rec.spec.studio = studio(studio_name);
        rec
    }

    fn catalog(budget: f64, at_limit: BudgetAction) -> StudioCatalog {
        StudioCatalog::new([StudioTerms {
            budget_per_month: Some(budget),
            at_limit,
            ..StudioTerms::open(studio("acme"))
        }])
        .unwrap()
    }

    // 2026-11-29T18:00:00Z and the first ms of December.
    const NOV: u64 = 1_795_975_200_000;
    const DEC: u64 = 1_796_083_200_000;

    #[test]
    fn charges_cross_thresholds_once_and_the_month_rolls_over() {
        let studios = catalog(10.0, BudgetAction::Warn);
        let mut b = Budgets::new(NOV);
        let acme = job("acme");
        let (before, after) = b.charge(&acme, 7.0, NOV);
        assert!(b
            .crossings(&acme.spec.studio, before, after, &studios, "CNY", false)
            .is_empty());
        let (before, after) = b.charge(&acme, 4.0, NOV);
        let crossed: Vec<u32> = b
            .crossings(&acme.spec.studio, before, after, &studios, "CNY", false)
            .iter()
            .map(|c| c.percent)
            .collect();
        assert_eq!(crossed, [80, 100]);
        assert_eq!(b.spent(&acme.spec.studio), 11.0);
        assert_eq!(b.mean_task_cost(&acme.id), Some(5.5));
        // A late report of a task finished in October is not this month's spend.
        b.charge(&acme, 1.0, NOV - 40 * 86_400_000);
        assert_eq!(b.spent(&acme.spec.studio), 11.0);
        b.roll(DEC);
        assert_eq!(b.spent(&acme.spec.studio), 0.0);
        let status = b.status(&acme.spec.studio, &studios, "CNY", false).unwrap();
        assert_eq!(status.month, "2026-12");
        assert!(b.status(&studio("other"), &studios, "CNY", false).is_none());
    }

    #[test]
    fn stop_counts_what_the_tasks_in_flight_are_expected_to_cost() {
        let studios = catalog(10.0, BudgetAction::Stop);
        let mut b = Budgets::new(NOV);
        let acme = job("acme");
        b.charge(&acme, 2.0, NOV);
        b.charge(&acme, 2.0, NOV);
        let name = acme.spec.studio.clone();
        // 4 spent, 2 a task: 2 in flight makes 8, 3 makes 10 (the budget).
        assert!(b.stopped(&studios, [(&acme.id, &name, 2)]).is_empty());
        assert_eq!(
            b.stopped(&studios, [(&acme.id, &name, 3)]),
            BTreeSet::from([name.clone()])
        );
        // Under warn nothing stops, even past the budget.
        b.charge(&acme, 20.0, NOV);
        assert!(b
            .stopped(&catalog(10.0, BudgetAction::Warn), [(&acme.id, &name, 0)])
            .is_empty());
        // With nothing in flight the spend alone decides.
        assert_eq!(b.stopped(&studios, []), BTreeSet::from([name]));
    }
}
