//! The placement model: how much placing one task of a job in one region costs, under the
//! job's policy. Pure arithmetic, no I/O; [`crate::dispatch::plan`] asks it where each released
//! task goes, and `suanli sim` drives the same code. The formula is written out in
//! `docs/SCHEDULING.md`; in short, for a task of job `j` in region `r` that starts after
//! waiting `w` seconds:
//!
//! ```text
//! core_s  = core_seconds_j / speed_r            wall_s = wall_seconds_j / speed_r
//! gpu_s   = wall_s × gpus_j
//! money   = price_r × core_s / 3600  +  gpu_price_r × gpu_s / 3600
//!           +  (inputs missing in r ? egress_r × GB_j / n_j : 0)
//! carbon  = (core_s × watts_r + gpu_s × gpu_watts_r) / 3600 / 1000 × PUE_r × gCO2_r / 1000  (kg)
//! finish  = w + wall_s + transfer_r
//! transfer_r = 0 when r holds the inputs; the rest of the fetch when they are on their way;
//!              else the link's backlog + bytes_j × 8 / bandwidth_r
//! score   = a × money / M  +  b × finish / T  +  c × carbon / C  +  late
//! late    = 0 when finish fits before the job's due time, else 100 × (1 + overrun / T)
//! due     = min(deadline / 1.2, patience × fastest)        (cheapest, greenest)
//!           deadline / 1.2                                  (balanced, fastest)
//! ```
//!
//! `n_j` is the number of the job's tasks still to place: moving the inputs is paid once and
//! serves every later task of the job there. `M`, `T`, `C` are the means over the job's
//! candidate regions (so the terms have no unit and the currency does not matter) and
//! `(a, b, c)` are the policy's [`Weights`]. A region with a free slot has `w = 0`; a full one
//! is an option too, with `w` from its queue ([`WaitModel`]), so a cheap region that frees a
//! slot soon can beat an expensive one that is free now.
//!
//! `cheapest` and `greenest` wait for their region only within a bound ([`Terms::patience`]):
//! a task may not finish later than `patience` times the job's completion under `fastest`
//! ([`share_farm`]), re-estimated every round, so a job that falls behind spreads.
//! `balanced` prices time instead of normalising it ([`Terms::value_of_hour`]): its score is
//! money plus carbon at the catalog's price plus the value of the delay, all in currency:
//!
//! ```text
//! balanced = money  +  carbon_price × carbon / 1000  +  value_of_hour × finish_h / width
//! ```
//!
//! where `width` is how many slots the job spreads over at most (its tasks left, capped by the
//! live slots and `max_slots`): one task an hour later delays the job by about `1 / width`
//! hours. (Divided by `M` like the others, so the deadline penalty keeps its meaning.)

use std::collections::HashMap;

use suanli_shared::protocol::Policy;
use suanli_shared::regions::RegionProfile;
use suanli_shared::Region;

/// Task wall (and core) seconds assumed for a job before any of its tasks has finished.
pub const DEFAULT_TASK_SECONDS: f64 = 60.0;
/// Weight of being late: larger than any difference the other terms can make between
/// regions, so a task that can finish in time never goes where it would be late.
pub const DEADLINE_WEIGHT: f64 = 100.0;
/// Safety factor on estimated finish times when checking a deadline (estimates are rough).
pub const RISK_FACTOR: f64 = 1.2;
pub use suanli_shared::regions::{DEFAULT_PATIENCE, DEFAULT_VALUE_OF_HOUR, PRIORITY_DOUBLING};
/// Weight of a policy's secondary terms: they only break near-ties of the main term.
const TIE: f64 = 1e-3;
/// Added to the score of a task that would start a new transfer, so that when all else is
/// equal tasks follow inputs already there or on their way rather than move them twice.
const FETCH_TIE: f64 = 1e-6;
/// Measured speed factors are kept within this range (one wild measurement cannot make a
/// region look free or useless).
const SPEED_RANGE: (f64, f64) = (0.05, 20.0);

/// How much each unitless term of the score counts under a policy. `balanced` does not use
/// these: it prices its terms in currency ([`Terms`]); its entry is that price's shape when
/// an hour is worth one average task's price over one average task time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub money: f64,
    pub time: f64,
    pub carbon: f64,
}

impl Weights {
    pub fn of(policy: Policy) -> Self {
        let (money, time, carbon) = match policy {
            Policy::Balanced => (1.0, 1.0, 0.0),
            Policy::Cheapest => (1.0, TIE, 0.0),
            Policy::Fastest => (TIE, 1.0, 0.0),
            Policy::Greenest => (TIE, TIE, 1.0),
        };
        Self {
            money,
            time,
            carbon,
        }
    }
}

/// The prices a job's placement weighs beyond the catalog's figures, resolved from the job's
/// spec and the farm's defaults ([`Terms::for_job`]).
pub use suanli_shared::regions::PlacementTerms as Terms;

/// One job's figures for [`share_farm`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    pub priority: i32,
    /// Tasks not finished (ready or in flight).
    pub tasks: f64,
    /// Wall seconds of one task at speed 1.
    pub wall_seconds: f64,
}

/// Each job's share of the farm if every job were placed for speed, from [`share_farm`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FairShare {
    /// Slot-seconds at speed 1 the farm renders before the job's last task: all of the higher
    /// priorities' work, and of each equal-priority job's as much as the job's own or all of it
    /// if less. Divided by the farm's rate, the job's completion under `fastest`.
    pub work: f64,
    /// How many jobs it shares slots with over its life, itself included: its equal-priority
    /// peers' slot time up to its own, over its own (1 when alone; less than the number of
    /// peers for a job that outlives them).
    pub sharing: f64,
}

impl FairShare {
    /// Seconds until the job would finish on a farm rendering `rate` slot-seconds at speed 1
    /// per second (its live slots times their speeds).
    pub fn completion_secs(&self, rate: f64) -> f64 {
        if rate > 0.0 {
            self.work / rate
        } else {
            f64::INFINITY
        }
    }
}

/// Every job's [`FairShare`]: the farm serves higher priorities first and shares its slots
/// fairly among jobs of equal priority, so a job finishes once the higher jobs are done and
/// each equal job has had as much slot time as it needs (processor sharing). O(n log n).
pub fn share_farm(backlogs: &[Backlog]) -> Vec<FairShare> {
    let slot_time = |b: &Backlog| (b.tasks * b.wall_seconds).max(0.0);
    // Jobs by priority, highest first, then by slot time.
    let mut order: Vec<usize> = (0..backlogs.len()).collect();
    order.sort_by(|&a, &b| {
        backlogs[b]
            .priority
            .cmp(&backlogs[a].priority)
            .then(slot_time(&backlogs[a]).total_cmp(&slot_time(&backlogs[b])))
    });
    let mut out = vec![
        FairShare {
            work: 0.0,
            sharing: 1.0,
        };
        backlogs.len()
    ];
    let mut higher = 0.0;
    let mut start = 0;
    while start < order.len() {
        let priority = backlogs[order[start]].priority;
        let end = order[start..]
            .iter()
            .position(|&i| backlogs[i].priority != priority)
            .map_or(order.len(), |n| start + n);
        // Within a level, sorted by slot time: the work of job n is the sum of the smaller
        // ones plus its own for each of itself and the larger ones.
        let mut below = 0.0;
        let level: f64 = order[start..end]
            .iter()
            .map(|&i| slot_time(&backlogs[i]))
            .sum();
        for (n, &i) in order[start..end].iter().enumerate() {
            let own = slot_time(&backlogs[i]);
            let equal = below + own * (end - start - n) as f64;
            out[i] = FairShare {
                work: higher + equal,
                sharing: if own > 0.0 {
                    (equal / own).max(1.0)
                } else {
                    1.0
                },
            };
            below += own;
        }
        higher += level;
        start = end;
    }
    out
}

/// What one task of a job takes on a region of speed 1 (the farm's reference).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskNeeds {
    /// Busy core-seconds of one task (what is billed).
    pub core_seconds: f64,
    /// Wall seconds of one task on one slot.
    pub wall_seconds: f64,
    /// Bytes of the job's inputs, moved once into each region that lacks them.
    pub input_bytes: u64,
    /// GPUs one task holds for its whole wall time: priced per GPU-hour and powered at the
    /// region's watts per GPU, on top of its cores.
    pub gpus: u32,
}

impl Default for TaskNeeds {
    fn default() -> Self {
        Self {
            core_seconds: DEFAULT_TASK_SECONDS,
            wall_seconds: DEFAULT_TASK_SECONDS,
            input_bytes: 0,
            gpus: 0,
        }
    }
}

/// Clamps a measured speed factor to a sane range; anything not a positive number is 1.
pub fn clamp_speed(speed: f64) -> f64 {
    if speed.is_finite() && speed > 0.0 {
        speed.clamp(SPEED_RANGE.0, SPEED_RANGE.1)
    } else {
        1.0
    }
}

/// Where a region stands with a job's inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Inputs {
    /// It holds them (or the job has none).
    Held,
    /// A fetch is under way; they arrive in `secs`.
    Arriving { secs: f64 },
    /// It lacks them; its link is busy with other fetches for `link_busy_secs` first.
    Missing { link_busy_secs: f64 },
}

/// One task in one region, starting as soon as it has a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Compute plus input transfer, in the catalog's currency.
    pub money: f64,
    pub carbon_kg: f64,
    /// Time to bring the inputs in (0 when the region holds them).
    pub transfer_secs: f64,
    /// Wall time of the render itself.
    pub render_secs: f64,
    /// Whether placing the task here starts a new transfer of the inputs.
    pub fetches: bool,
}

impl Estimate {
    /// For a task of `needs` in a region of `profile` running the job's renderer at `speed`,
    /// given where the region stands with the job's `inputs`. A transfer's price is shared by
    /// `sharing` tasks (the job's tasks still to place: once the inputs are there, all of them
    /// can use them); its time is not shared, since the first tasks there wait for all of it.
    pub fn new(
        profile: &RegionProfile,
        speed: f64,
        needs: &TaskNeeds,
        inputs: Inputs,
        sharing: f64,
    ) -> Self {
        let speed = clamp_speed(speed);
        let core_s = needs.core_seconds.max(0.0) / speed;
        let (tx_money, tx_secs) = match inputs {
            _ if needs.input_bytes == 0 => (0.0, 0.0),
            Inputs::Held => (0.0, 0.0),
            Inputs::Arriving { secs } => (0.0, secs.max(0.0)),
            Inputs::Missing { link_busy_secs } => (
                profile.transfer_cost(needs.input_bytes) / sharing.max(1.0),
                link_busy_secs.max(0.0) + profile.transfer_secs(needs.input_bytes),
            ),
        };
        let render_secs = needs.wall_seconds.max(0.0) / speed;
        let gpu_s = render_secs * f64::from(needs.gpus);
        Self {
            money: profile.compute_cost(core_s) + profile.gpu_cost(gpu_s, None) + tx_money,
            carbon_kg: profile.carbon_kg(core_s)
                + profile.gpu_energy_kwh(gpu_s) * profile.carbon_g_per_kwh / 1000.0,
            transfer_secs: tx_secs,
            render_secs,
            fetches: needs.input_bytes > 0 && matches!(inputs, Inputs::Missing { .. }),
        }
    }

    /// Seconds from start to finished, without waiting for a slot.
    pub fn secs(&self) -> f64 {
        self.transfer_secs + self.render_secs
    }
}

/// When a task waiting for a full region gets a slot. With `live_slots` busy slots whose
/// remaining times are spread evenly, the `k`-th waiting task (0-based, counting the
/// `queued` ones already ahead of it) starts after about
/// `render × (queued + k + 1) / (live_slots + 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitModel {
    pub queued: f64,
    pub live_slots: f64,
}

impl WaitModel {
    pub fn wait_secs(&self, render_secs: f64, k: f64) -> f64 {
        render_secs * (self.queued + k + 1.0) / (self.live_slots.max(0.0) + 1.0)
    }
}

/// What the job's policy is given beyond its candidates: when it is due and what time is
/// worth to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Due {
    /// Seconds from now to the job's deadline (negative when already past).
    pub deadline_in: Option<f64>,
    /// Seconds from now until the job would finish under `fastest`
    /// ([`FairShare::completion_secs`]); `None` when unknown.
    pub fastest_in: Option<f64>,
    /// Slots the job can spread over at most (see the module docs).
    pub width: f64,
}

/// Scores options for one job among its candidate regions (lower is better).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scorer {
    /// Score per unit of money, per second of finish and per kg of CO2.
    per_money: f64,
    per_sec: f64,
    per_kg: f64,
    /// Mean zero-wait seconds over the candidates (the unit of lateness).
    secs_ref: f64,
    /// Seconds from now by which every task should finish: the deadline with its safety
    /// factor, or the patience bound, whichever is earlier.
    due_in: Option<f64>,
    /// Whether `due_in` is the patience bound (else the deadline, if any).
    patience_binds: bool,
}

fn mean_or_one(sum: f64, n: usize) -> f64 {
    let m = if n == 0 { 0.0 } else { sum / n as f64 };
    if m > 0.0 && m.is_finite() {
        m
    } else {
        1.0
    }
}

impl Scorer {
    /// `candidates`: the zero-wait estimates of every region the job may use now; their means
    /// make the terms unitless. `terms` and `due`: the job's prices and time figures.
    pub fn new<'a>(
        policy: Policy,
        candidates: impl IntoIterator<Item = &'a Estimate>,
        terms: &Terms,
        due: &Due,
    ) -> Self {
        let (mut money, mut secs, mut carbon, mut n) = (0.0, 0.0, 0.0, 0);
        for e in candidates {
            money += e.money;
            secs += e.secs();
            carbon += e.carbon_kg;
            n += 1;
        }
        let (money_ref, secs_ref, carbon_ref) = (
            mean_or_one(money, n),
            mean_or_one(secs, n),
            mean_or_one(carbon, n),
        );
        let (per_money, per_sec, per_kg) = match policy {
            Policy::Balanced => (
                1.0 / money_ref,
                terms.value_of_hour.max(0.0) / 3600.0 / due.width.max(1.0) / money_ref,
                terms.carbon_per_tonne.max(0.0) / 1000.0 / money_ref,
            ),
            _ => {
                let w = Weights::of(policy);
                (
                    w.money / money_ref,
                    w.time / secs_ref,
                    w.carbon / carbon_ref,
                )
            }
        };
        let by_deadline = due.deadline_in.map(|d| d / RISK_FACTOR);
        let by_patience = match policy {
            Policy::Cheapest | Policy::Greenest => due
                .fastest_in
                .filter(|f| f.is_finite())
                .map(|f| f * terms.applied_patience()),
            Policy::Balanced | Policy::Fastest => None,
        };
        let (due_in, patience_binds) = match (by_deadline, by_patience) {
            (Some(a), Some(b)) => (Some(a.min(b)), b < a),
            (a, b) => (a.or(b), b.is_some()),
        };
        Self {
            per_money,
            per_sec,
            per_kg,
            secs_ref,
            due_in,
            patience_binds,
        }
    }

    /// Whether the due time is the patience bound rather than the deadline.
    pub fn patience_binds(&self) -> bool {
        self.patience_binds
    }

    /// Seconds from now by which the job's tasks should finish, if anything bounds them.
    pub fn due_in(&self) -> Option<f64> {
        self.due_in
    }

    /// The part of the score that does not depend on when the task finishes.
    fn fixed(&self, e: &Estimate) -> f64 {
        self.per_money * e.money
            + self.per_kg * e.carbon_kg
            + if e.fetches { FETCH_TIE } else { 0.0 }
    }

    /// The penalty for finishing `finish` seconds from now.
    fn late(&self, finish: f64) -> f64 {
        match self.due_in {
            Some(d) if finish > d => DEADLINE_WEIGHT * (1.0 + (finish - d) / self.secs_ref),
            _ => 0.0,
        }
    }

    /// Score of running the task of `e` after waiting `wait_secs` for a slot.
    pub fn score(&self, e: &Estimate, wait_secs: f64) -> f64 {
        let finish = wait_secs + e.secs();
        self.fixed(e) + self.per_sec * finish + self.late(finish)
    }

    /// Whether finishing the task of `e` after waiting `wait_secs` would break the job's
    /// deadline (with its safety factor) or its patience bound.
    pub fn at_risk(&self, e: &Estimate, wait_secs: f64) -> bool {
        self.late(wait_secs + e.secs()) > 0.0
    }

    /// How many tasks would rather wait for a full region (queue positions `from_k`,
    /// `from_k + 1`, …) than take an option scored `threshold` now: the count of `k >= from_k`
    /// with `score(e, wait(k)) < threshold`. Closed form (the score is piecewise linear and
    /// rising in `k`), so planning stays O(regions) however long the backlog; may be infinite
    /// when waiting costs nothing (no render time estimate).
    pub fn waiting_below(
        &self,
        e: &Estimate,
        queue: &WaitModel,
        from_k: f64,
        threshold: f64,
    ) -> f64 {
        // Latest finish (seconds from now) that still scores below the threshold.
        let a = self.fixed(e);
        let c = self.per_sec;
        let on_time = if c > 0.0 {
            (threshold - a) / c
        } else if a < threshold {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        };
        let latest = match self.due_in {
            Some(d) if on_time > d => {
                // Past d the score jumps by the penalty and rises faster.
                let slope = c + DEADLINE_WEIGHT / self.secs_ref;
                let late =
                    (threshold - a - DEADLINE_WEIGHT + DEADLINE_WEIGHT * d / self.secs_ref) / slope;
                late.max(d)
            }
            _ => on_time,
        };
        let render = e.render_secs;
        if render <= 0.0 {
            return if e.secs() < latest {
                f64::INFINITY
            } else {
                0.0
            };
        }
        if latest.is_infinite() {
            return if latest > 0.0 { f64::INFINITY } else { 0.0 };
        }
        // wait(k) = render (q + k + 1) / (L + 1) < latest - secs  <=>  k < k_end
        let k_end =
            (latest - e.secs()) * (queue.live_slots.max(0.0) + 1.0) / render - queue.queued - 1.0;
        // Within rounding of a whole number, k_end is an exact tie (score == threshold), which
        // does not wait: the way the terms are multiplied must not decide.
        ((k_end - 1e-9).ceil() - from_k).max(0.0)
    }
}

/// Each region's measured speed per renderer, learned from finished tasks: the ratio of the
/// job's expected wall time (at speed 1) to the task's real one, as a moving geometric mean.
/// 1.0 until a region has finished a task of that renderer.
#[derive(Debug, Clone, Default)]
pub struct SpeedBook {
    /// region -> renderer kind -> (mean of ln(ratio), samples).
    logs: HashMap<Region, HashMap<String, (f64, u32)>>,
}

/// Samples after which the speed becomes a moving average (older samples fade).
const SPEED_WINDOW: u32 = 50;

impl SpeedBook {
    /// Records one finished task: it was expected to take `expected_secs` at speed 1 and took
    /// `actual_secs`. Non-positive figures are ignored.
    pub fn record(
        &mut self,
        region: &Region,
        renderer: &str,
        expected_secs: f64,
        actual_secs: f64,
    ) {
        if !(expected_secs > 0.0 && actual_secs > 0.0) {
            return;
        }
        let ln = (expected_secs / actual_secs).ln();
        // Looked up before inserting: recording runs once per finished task.
        let per_region = match self.logs.get_mut(region) {
            Some(m) => m,
            None => self.logs.entry(region.clone()).or_default(),
        };
        let entry = match per_region.get_mut(renderer) {
            Some(e) => e,
            None => per_region.entry(renderer.to_string()).or_insert((0.0, 0)),
        };
        entry.1 = (entry.1 + 1).min(SPEED_WINDOW);
        entry.0 += (ln - entry.0) / entry.1 as f64;
    }

    /// The region's speed factor for the renderer (2.0: tasks take half the expected time).
    pub fn factor(&self, region: &Region, renderer: &str) -> f64 {
        self.logs
            .get(region)
            .and_then(|m| m.get(renderer))
            .map(|(ln, _)| clamp_speed(ln.exp()))
            .unwrap_or(1.0)
    }
}

#[cfg(test)]
mod tests;
