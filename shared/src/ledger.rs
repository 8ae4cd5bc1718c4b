//! The ledger: what rendering cost in money, energy and carbon, per region and in total. One
//! home for pricing a region's figures with the region catalog's formulas and for summing them,
//! used by the coordinator (`status`), the CLI (`suanli ledger`) and the operator terminal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::protocol::{BudgetStatus, GpuUse, JobStatus, RegionFigures};
use crate::regions::{RegionCatalog, RegionProfile};
use crate::{Region, Studio};

impl RegionFigures {
    /// Sets cost, energy and carbon from the work done, at `profile`'s prices: compute at the
    /// price per core-hour plus egress for the bytes moved in; facility energy (busy
    /// core-hours x watts per core x PUE) and its carbon.
    pub fn price(&mut self, profile: &RegionProfile) {
        // GPU time not attributed to a model (none should be) is priced at the region's rate.
        let by_model: f64 = self.gpu_models.values().sum();
        let unattributed = (self.gpu_seconds - by_model).max(0.0);
        let gpu_cost: f64 = self
            .gpu_models
            .iter()
            .map(|(model, secs)| profile.gpu_cost(*secs, Some(model)))
            .sum::<f64>()
            + profile.gpu_cost(unattributed, None);
        self.cost = profile.compute_cost(self.core_seconds)
            + gpu_cost
            + profile.transfer_cost(self.bytes_in);
        self.energy_kwh =
            profile.energy_kwh(self.core_seconds) + profile.gpu_energy_kwh(self.gpu_seconds);
        self.carbon_kg = self.energy_kwh * profile.carbon_g_per_kwh / 1000.0;
    }

    /// Adds one task's GPU time.
    pub fn add_gpu(&mut self, gpu: &GpuUse) {
        self.gpu_seconds += gpu.seconds;
        *self.gpu_models.entry(gpu.model.clone()).or_default() += gpu.seconds;
    }

    /// Adds another region's (or job's) figures to these.
    pub fn add(&mut self, other: &RegionFigures) {
        self.frames_done += other.frames_done;
        self.core_seconds += other.core_seconds;
        self.bytes_in += other.bytes_in;
        self.gpu_seconds += other.gpu_seconds;
        for (model, secs) in &other.gpu_models {
            *self.gpu_models.entry(model.clone()).or_default() += secs;
        }
        self.cost += other.cost;
        self.energy_kwh += other.energy_kwh;
        self.carbon_kg += other.carbon_kg;
    }
}

impl JobStatus {
    /// The job's figures summed over every region it rendered in.
    pub fn total_figures(&self) -> RegionFigures {
        let mut total = RegionFigures::default();
        for figures in self.regions.values() {
            total.add(figures);
        }
        total
    }
}

/// What one rendered task cost: its figures priced like a ledger row (compute, GPU time and
/// egress), so a budget is spent by exactly what `suanli ledger` shows.
pub fn task_cost(
    profile: &RegionProfile,
    core_seconds: f64,
    gpu: Option<&GpuUse>,
    bytes_in: u64,
) -> f64 {
    let mut figures = RegionFigures {
        frames_done: 0,
        core_seconds,
        bytes_in,
        ..Default::default()
    };
    if let Some(gpu) = gpu {
        figures.add_gpu(gpu);
    }
    figures.price(profile);
    figures.cost
}

/// Prices every region of a job's status from the catalog (regions the catalog does not name
/// get its neutral profile).
pub fn price_status(status: &mut JobStatus, catalog: &RegionCatalog) {
    for (name, figures) in status.regions.iter_mut() {
        if let Ok(region) = name.parse::<Region>() {
            figures.price(&catalog.profile(&region));
        }
    }
}

/// Per-region and per-studio totals over some jobs, and their sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Jobs summed.
    pub jobs: usize,
    pub regions: BTreeMap<String, RegionFigures>,
    pub total: RegionFigures,
    /// Totals per studio (over every month of the jobs summed).
    #[serde(default)]
    pub studios: BTreeMap<Studio, RegionFigures>,
    /// Each studio's spend this month against its budget, for studios with one (as the
    /// coordinator reported it with their jobs).
    #[serde(default)]
    pub budgets: BTreeMap<Studio, BudgetStatus>,
}

impl Ledger {
    /// The ledger of these jobs, from their (priced) statuses.
    pub fn of<'a>(statuses: impl IntoIterator<Item = &'a JobStatus>) -> Self {
        let mut ledger = Ledger::default();
        for s in statuses {
            ledger.add_job(s);
        }
        ledger
    }

    /// Adds one job's figures.
    pub fn add_job(&mut self, status: &JobStatus) {
        self.jobs += 1;
        let studio = self.studios.entry(status.studio.clone()).or_default();
        for (region, figures) in &status.regions {
            self.regions.entry(region.clone()).or_default().add(figures);
            self.total.add(figures);
            studio.add(figures);
        }
        if let Some(b) = &status.budget {
            self.budgets.insert(b.studio.clone(), b.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FrameCounts, JobState, TaskCounts};
    use crate::JobId;

    fn status(regions: &[(&str, f64, u64)]) -> JobStatus {
        JobStatus {
            id: JobId::generate(),
            name: "shot".into(),
            studio: Default::default(),
            state: JobState::Done,
            priority: 0,
            renderer: "builtin".into(),
            created_ms: 0,
            finished_ms: None,
            reason: None,
            frames: FrameCounts::default(),
            tasks: TaskCounts::default(),
            regions: regions
                .iter()
                .map(|(r, core_seconds, bytes_in)| {
                    let f = RegionFigures {
                        frames_done: 1,
                        core_seconds: *core_seconds,
                        bytes_in: *bytes_in,
                        ..Default::default()
                    };
                    (r.to_string(), f)
                })
                .collect(),
            failures: vec![],
            requirements: Default::default(),
            failures_total: 0,
            blocklist: vec![],
            max_retries: 0,
            waiting: None,
            inputs_in: Default::default(),
            budget: None,
        }
    }

    #[test]
    fn pricing_uses_the_catalog_formulas_and_the_ledger_sums_per_region() {
        let catalog = RegionCatalog::default();
        let mut a = status(&[("guian", 3600.0, 1_000_000_000), ("ulanqab", 7200.0, 0)]);
        let mut b = status(&[("guian", 3600.0, 0)]);
        price_status(&mut a, &catalog);
        price_status(&mut b, &catalog);
        let guian = catalog.profile(&"guian".parse().unwrap());
        assert_eq!(
            a.regions["guian"].cost,
            guian.compute_cost(3600.0) + guian.transfer_cost(1_000_000_000)
        );
        assert_eq!(a.regions["guian"].energy_kwh, guian.energy_kwh(3600.0));
        assert_eq!(a.regions["guian"].carbon_kg, guian.carbon_kg(3600.0));
        let ledger = Ledger::of([&a, &b]);
        assert_eq!(ledger.jobs, 2);
        assert_eq!(ledger.regions["guian"].frames_done, 2);
        assert_eq!(ledger.regions["guian"].core_seconds, 7200.0);
        assert_eq!(ledger.total.core_seconds, 14_400.0);
        assert_eq!(a.total_figures().core_seconds, 10_800.0);
        assert_eq!(a.total_figures().frames_done, 2);
        assert_eq!(ledger.studios[&Studio::default()].core_seconds, 14_400.0);
        assert_eq!(
            ledger.total.cost,
            ledger.regions["guian"].cost + ledger.regions["ulanqab"].cost
        );
        // A task's cost, as a budget is charged, is its row in the ledger.
        assert_eq!(
            task_cost(&guian, 3600.0, None, 1_000_000_000),
            a.regions["guian"].cost
        );
    }
}
