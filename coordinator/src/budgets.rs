//! Studio budgets: what each studio has spent this calendar month (UTC), charged task by task
//! as tasks are committed, at the ledger's prices ([`suanli_shared::ledger::task_cost`]); the
//! thresholds a charge crosses (80 %, 100 %); and which studios' releases are stopped.
//!
//! A studio under `stop` (or `cancel`) may release only as many tasks as its budget has room
//! for: what is left after what it spent and what its tasks in flight are expected to cost (its
//! mean cost per task so far), divided by that mean, rounded up ([`budget_room`]). So the month
//! ends within about one task of the budget, whatever the number of slots, as far as the mean
//! is a good estimate (before its first task is committed there is none, and nothing holds it
//! back). The
//! spend is rebuilt from the task records when a coordinator starts; the month rolls over at
//! midnight UTC on its first day. Pure: the actor charges, publishes and cancels.

use std::collections::BTreeMap;

use suanli_shared::protocol::{BudgetStatus, JobRecord, TaskRecord, TaskState};
use suanli_shared::regions::RegionCatalog;
use suanli_shared::studios::{
    month_name, month_of, thresholds_crossed, BudgetAction, StudioCatalog, StudioTerms,
};
use suanli_shared::Studio;

/// The month's spend per studio and each job's mean task cost.
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    /// The month being counted ([`month_of`]).
    month: u32,
    spent: BTreeMap<Studio, f64>,
    /// Per studio: cost of its committed tasks (all months) and how many, for its mean.
    tasks: BTreeMap<Studio, (f64, u32)>,
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
                task.gpu.as_ref(),
                task.bytes_in,
            ),
            _ => 0.0,
        }
    }

    /// Charges `cost`, spent by a task of `job` that finished at `at_ms`, to the job's studio.
    /// Returns the studio's spend this month before and after (equal when the task finished in
    /// another month).
    pub fn charge(&mut self, job: &JobRecord, cost: f64, at_ms: u64) -> (f64, f64) {
        let tally = self.tasks.entry(job.spec.studio.clone()).or_default();
        tally.0 += cost;
        tally.1 += 1;
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

    /// The studio's mean cost per committed task, when it has committed one.
    pub fn mean_task_cost(&self, studio: &Studio) -> Option<f64> {
        self.tasks
            .get(studio)
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

    /// How many more tasks each studio under `stop` or `cancel` may release now
    /// ([`budget_room`]), from its tasks in flight (`in_flight`: a studio and a count, any
    /// number of times). Studios with no such limit are not listed. A step per entry.
    pub fn rooms<'a>(
        &self,
        studios: &StudioCatalog,
        in_flight: impl IntoIterator<Item = (&'a Studio, u32)>,
    ) -> BTreeMap<Studio, u32> {
        let mut held: BTreeMap<&Studio, u32> = BTreeMap::new();
        for (studio, n) in in_flight {
            *held.entry(studio).or_default() += n;
        }
        studios
            .studios()
            .filter_map(|t| {
                let n = held.get(&t.name).copied().unwrap_or(0);
                let room = budget_room(t, self.spent(&t.name), n, self.mean_task_cost(&t.name))?;
                Some((t.name.clone(), room))
            })
            .collect()
    }
}

/// The budget rule, one for the coordinator and `suanli sim`: how many more tasks a studio
/// under `stop` or `cancel` may release. Its tasks in flight are expected to cost `mean` each;
/// what the budget has left after them and `spent` allows that many tasks more, rounded up (so
/// the last one may pass the budget by less than a task). `None`: no limit (no budget, `warn`,
/// or no mean yet while money is left).
pub fn budget_room(
    terms: &StudioTerms,
    spent: f64,
    in_flight: u32,
    mean: Option<f64>,
) -> Option<u32> {
    if terms.at_limit == BudgetAction::Warn {
        return None;
    }
    let budget = terms.budget_per_month?;
    let mean = mean.unwrap_or(0.0);
    let left = budget - spent - f64::from(in_flight) * mean;
    if left <= 0.0 {
        Some(0)
    } else if mean > 0.0 {
        Some((left / mean).ceil().min(f64::from(u32::MAX)) as u32)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(b.mean_task_cost(&acme.spec.studio), Some(5.5));
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
    fn stop_leaves_room_for_what_the_budget_has_left() {
        let studios = catalog(10.0, BudgetAction::Stop);
        let mut b = Budgets::new(NOV);
        let acme = job("acme");
        let name = acme.spec.studio.clone();
        // No task committed yet: no estimate, no limit.
        assert!(b.rooms(&studios, [(&name, 5)]).is_empty());
        b.charge(&acme, 2.0, NOV);
        b.charge(&acme, 2.0, NOV);
        // 4 spent, 2 a task: with 1 in flight 4 left, room for 2; with 2 in flight, 1.
        assert_eq!(b.rooms(&studios, [(&name, 1)])[&name], 2);
        assert_eq!(b.rooms(&studios, [(&name, 1), (&name, 1)])[&name], 1);
        assert_eq!(b.rooms(&studios, [(&name, 3)])[&name], 0);
        // Rounded up: 1 left at 2 a task still releases one (the budget passed by under one).
        b.charge(&acme, 2.0, NOV);
        b.charge(&acme, 3.0, NOV);
        assert_eq!(b.spent(&name), 9.0);
        assert_eq!(b.rooms(&studios, [])[&name], 1);
        // Under warn nothing is limited, even past the budget.
        b.charge(&acme, 20.0, NOV);
        assert!(b
            .rooms(&catalog(10.0, BudgetAction::Warn), [(&name, 0)])
            .is_empty());
        assert_eq!(b.rooms(&studios, [])[&name], 0);
    }
}
