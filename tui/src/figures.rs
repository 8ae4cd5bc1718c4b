//! Figures derived from the state for the views: per-region capacity and utilization, per-job
//! progress, ETA and cost, and the ledger. Pure functions of the state, computed at draw time
//! (a few thousand records: microseconds), so the state keeps only what was observed. Money and
//! energy are never derived here: the coordinator prices each job's figures
//! ([`suanli_shared::ledger`]) and the terminal only sums and shows them.

use std::collections::{BTreeMap, BTreeSet};

use suanli_shared::ledger::Ledger;
use suanli_shared::protocol::{BudgetStatus, JobStatus, RegionFigures, WorkerState};
use suanli_shared::regions::RegionProfile;
use suanli_shared::{Region, Studio};

use crate::state::{State, BUCKET_MS, MINUTE_BUCKETS};

/// One line of the regions table.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionRow {
    pub region: Region,
    pub live_workers: u32,
    pub known_workers: u32,
    pub busy_slots: u32,
    pub live_slots: u32,
    /// Busy slot-seconds over live slot-seconds in the last minute; `None` with no live slots.
    pub utilization: Option<f64>,
    /// Tasks waiting in the region's queue, when known.
    pub queue: Option<u64>,
    pub frames_per_min: f64,
    pub price: Option<f64>,
    pub pue: Option<f64>,
    /// GPUs of its live workers, how many their tasks hold, and the largest card's VRAM.
    pub gpus: u32,
    pub busy_gpus: u32,
    pub vram_mib: u64,
}

/// The catalog's figures for a region: its own entry, the neutral ones when the catalog does
/// not name it, nothing when there is no catalog at all.
pub fn profile(state: &State, region: &Region) -> Option<RegionProfile> {
    let catalog = state.catalog.as_ref()?;
    Some(
        catalog
            .get(region)
            .cloned()
            .unwrap_or_else(|| RegionProfile::neutral(region.clone())),
    )
}

/// Every region the terminal knows of: from workers, the catalog, queues, job figures.
pub fn regions(state: &State) -> BTreeSet<Region> {
    let mut out: BTreeSet<Region> = state.workers.iter().map(|w| w.region.clone()).collect();
    if let Some(c) = &state.catalog {
        out.extend(c.keys().cloned());
    }
    out.extend(state.depths.keys().cloned());
    for j in &state.jobs {
        out.extend(j.regions.keys().filter_map(|r| r.parse::<Region>().ok()));
    }
    out
}

pub fn region_rows(state: &State) -> Vec<RegionRow> {
    let mut rows: BTreeMap<Region, RegionRow> = regions(state)
        .into_iter()
        .map(|region| {
            let p = profile(state, &region);
            let row = RegionRow {
                live_workers: 0,
                known_workers: 0,
                busy_slots: 0,
                live_slots: 0,
                utilization: None,
                queue: state.depths.get(&region).copied(),
                frames_per_min: 0.0,
                price: p.as_ref().map(|p| p.price_per_core_hour),
                pue: p.as_ref().map(|p| p.pue),
                gpus: 0,
                busy_gpus: 0,
                vram_mib: 0,
                region,
            };
            (row.region.clone(), row)
        })
        .collect();
    for w in &state.workers {
        let Some(row) = rows.get_mut(&w.region) else {
            continue;
        };
        row.known_workers += 1;
        if w.state != WorkerState::Lost {
            row.live_workers += 1;
            row.busy_slots += w.busy.min(w.slots);
            row.live_slots += w.slots;
            if let Some(r) = &w.resources {
                let n = r.gpus.len() as u32;
                row.gpus += n;
                row.busy_gpus += w.gpus_busy.min(n);
                let vram = r.gpus.iter().map(|g| g.memory_mib).max().unwrap_or(0);
                row.vram_mib = row.vram_mib.max(vram);
            }
        }
    }
    for row in rows.values_mut() {
        if let Some(h) = state.history.get(&row.region) {
            let (busy, live) = h.util.sum(state.now_ms, MINUTE_BUCKETS);
            row.utilization = (live > 0.0).then(|| busy / live);
            row.frames_per_min = frames_per_min(&h.frames, state.now_ms);
        }
        if row.utilization.is_none() && row.live_slots > 0 {
            // No samples yet: the instant figure.
            row.utilization = Some(row.busy_slots as f64 / row.live_slots as f64);
        }
    }
    rows.into_values().collect()
}

/// Frames per minute over the last minute of a frames series.
pub fn frames_per_min(series: &crate::state::Series, now_ms: u64) -> f64 {
    series.sum(now_ms, MINUTE_BUCKETS).0
}

/// Utilization per bucket of a region (busy over live slot samples), oldest first.
pub fn utilization_history(state: &State, region: &Region, n: usize) -> Vec<Option<f64>> {
    match state.history.get(region) {
        None => vec![None; n],
        Some(h) => h
            .util
            .window(state.now_ms, n)
            .into_iter()
            .map(|b| b.and_then(|b| (b.b > 0.0).then(|| b.a / b.b)))
            .collect(),
    }
}

/// Farm-wide frames rendered per bucket, oldest first: zero where nothing was rendered,
/// `None` before the terminal started watching.
pub fn throughput_history(state: &State, n: usize) -> Vec<Option<f64>> {
    let first_seen = state.started_ms / BUCKET_MS;
    let last = state.now_ms / BUCKET_MS;
    state
        .farm_frames
        .window(state.now_ms, n)
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let id = (last + 1 + i as u64).checked_sub(n as u64);
            match b {
                Some(b) => Some(b.a),
                None if id.is_some_and(|id| id >= first_seen) => Some(0.0),
                None => None,
            }
        })
        .collect()
}

/// Money as shown: `None` (a dash) until the coordinator offers its catalog, as for prices and
/// PUE. A coordinator that cannot give one may send its figures unpriced (zero), and zero must
/// not read as free.
pub fn cost(state: &State, figures: &RegionFigures) -> Option<f64> {
    state.catalog.is_some().then_some(figures.cost)
}

/// Facility energy as shown: `None` until the coordinator offers its catalog (see [`cost`]).
pub fn energy_kwh(state: &State, figures: &RegionFigures) -> Option<f64> {
    state.catalog.is_some().then_some(figures.energy_kwh)
}

/// One line of the studios table: what a studio has on the farm and what it spent.
#[derive(Debug, Clone, PartialEq)]
pub struct StudioRow {
    pub studio: Studio,
    pub jobs: usize,
    pub active: usize,
    /// Its tasks released and not finished (running or queued in a region).
    pub in_flight: u32,
    /// Its part of every studio's tasks in flight (0 to 1).
    pub share: f64,
    /// Its jobs' figures summed (every month).
    pub figures: RegionFigures,
    /// This month against its budget, as the coordinator reported it.
    pub budget: Option<BudgetStatus>,
}

/// Every studio with a job the terminal knows of, in name order.
pub fn studio_rows(state: &State) -> Vec<StudioRow> {
    let ledger = Ledger::of(&state.jobs);
    let mut rows: BTreeMap<&Studio, StudioRow> = BTreeMap::new();
    for j in &state.jobs {
        let row = rows.entry(&j.studio).or_insert_with(|| StudioRow {
            studio: j.studio.clone(),
            jobs: 0,
            active: 0,
            in_flight: 0,
            share: 0.0,
            figures: ledger.studios.get(&j.studio).cloned().unwrap_or_default(),
            budget: ledger.budgets.get(&j.studio).cloned(),
        });
        row.jobs += 1;
        row.active += usize::from(!j.state.is_final());
        row.in_flight += j.tasks.running + j.tasks.queued;
    }
    let total: u32 = rows.values().map(|r| r.in_flight).sum();
    let mut out: Vec<StudioRow> = rows.into_values().collect();
    for r in &mut out {
        r.share = if total > 0 {
            f64::from(r.in_flight) / f64::from(total)
        } else {
            0.0
        };
    }
    out
}

/// Core-hours of some figures.
pub fn core_hours(figures: &RegionFigures) -> f64 {
    figures.core_seconds / 3600.0
}

/// Seconds until a job is done: remaining tasks in waves of the tasks it runs at once, each
/// wave as long as its measured mean task. `None` for a finished job or before any task of it
/// has been measured.
pub fn eta_secs(state: &State, job: &JobStatus) -> Option<f64> {
    if job.state.is_final() {
        return None;
    }
    let t = &job.tasks;
    let remaining = t.total.saturating_sub(t.done + t.failed + t.canceled);
    if remaining == 0 {
        return None;
    }
    let mean = state.mean_task_secs(&job.id)?;
    let parallel = t.running.max(1);
    Some(remaining.div_ceil(parallel) as f64 * mean)
}

/// Seconds since the job was submitted (until it finished).
pub fn elapsed_secs(state: &State, job: &JobStatus) -> f64 {
    let end = job.finished_ms.unwrap_or(state.now_ms);
    end.saturating_sub(job.created_ms) as f64 / 1000.0
}
