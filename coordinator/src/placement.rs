//! The placement model: how much placing one task of a job in one region costs, under the
//! job's policy. Pure arithmetic, no I/O; [`crate::dispatch::plan`] asks it where each released
//! task goes, and `suanli sim` drives the same code. The formula is written out in
//! `docs/SCHEDULING.md`; in short, for a task of job `j` in region `r` that starts after
//! waiting `w` seconds:
//!
//! ```text
//! core_s  = core_seconds_j / speed_r            wall_s = wall_seconds_j / speed_r
//! money   = price_r × core_s / 3600  +  (inputs missing in r ? egress_r × GB_j / n_j : 0)
//! carbon  = core_s / 3600 × watts_r / 1000 × PUE_r × gCO2_r / 1000       (kg)
//! finish  = w + wall_s + transfer_r
//! transfer_r = 0 when r holds the inputs; the rest of the fetch when they are on their way;
//!              else the link's backlog + bytes_j × 8 / bandwidth_r
//! score   = a × money / M  +  b × finish / T  +  c × carbon / C  +  late
//! late    = 0 when 1.2 × finish fits before the deadline, else 100 × (1 + overrun / T)
//! ```
//!
//! `n_j` is the number of the job's tasks still to place: moving the inputs is paid once and
//! serves every later task of the job there. `M`, `T`, `C` are the means over the job's candidate regions (so the terms have no unit and
//! the currency does not matter) and `(a, b, c)` are the policy's [`Weights`]. A region with a
//! free slot has `w = 0`; a full one is an option too, with `w` from its queue ([`WaitModel`]),
//! so a cheap region that frees a slot soon can beat an expensive one that is free now. That is
//! how `cheapest` waits for cheap slots and `balanced` waits only while waiting is worth it.

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
/// Weight of a policy's secondary terms: they only break near-ties of the main term.
const TIE: f64 = 1e-3;
/// Added to the score of a task that would start a new transfer, so that when all else is
/// equal tasks follow inputs already there or on their way rather than move them twice.
const FETCH_TIE: f64 = 1e-6;
/// Measured speed factors are kept within this range (one wild measurement cannot make a
/// region look free or useless).
const SPEED_RANGE: (f64, f64) = (0.05, 20.0);

/// How much each term of the score counts under a policy.
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

/// What one task of a job takes on a region of speed 1 (the farm's reference).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskNeeds {
    /// Busy core-seconds of one task (what is billed).
    pub core_seconds: f64,
    /// Wall seconds of one task on one slot.
    pub wall_seconds: f64,
    /// Bytes of the job's inputs, moved once into each region that lacks them.
    pub input_bytes: u64,
}

impl Default for TaskNeeds {
    fn default() -> Self {
        Self {
            core_seconds: DEFAULT_TASK_SECONDS,
            wall_seconds: DEFAULT_TASK_SECONDS,
            input_bytes: 0,
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
        Self {
            money: profile.compute_cost(core_s) + tx_money,
            carbon_kg: profile.carbon_kg(core_s),
            transfer_secs: tx_secs,
            render_secs: needs.wall_seconds.max(0.0) / speed,
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

/// Scores options for one job among its candidate regions (lower is better).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scorer {
    weights: Weights,
    money_ref: f64,
    secs_ref: f64,
    carbon_ref: f64,
    /// Seconds from now to the deadline (negative when already past).
    deadline_in: Option<f64>,
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
    /// make the terms unitless. `deadline_in`: seconds from now to the job's deadline.
    pub fn new<'a>(
        policy: Policy,
        candidates: impl IntoIterator<Item = &'a Estimate>,
        deadline_in: Option<f64>,
    ) -> Self {
        let (mut money, mut secs, mut carbon, mut n) = (0.0, 0.0, 0.0, 0);
        for e in candidates {
            money += e.money;
            secs += e.secs();
            carbon += e.carbon_kg;
            n += 1;
        }
        Self {
            weights: Weights::of(policy),
            money_ref: mean_or_one(money, n),
            secs_ref: mean_or_one(secs, n),
            carbon_ref: mean_or_one(carbon, n),
            deadline_in,
        }
    }

    /// The part of the score that does not depend on when the task finishes.
    fn fixed(&self, e: &Estimate) -> f64 {
        self.weights.money * e.money / self.money_ref
            + self.weights.carbon * e.carbon_kg / self.carbon_ref
            + if e.fetches { FETCH_TIE } else { 0.0 }
    }

    /// The penalty for finishing `finish` seconds from now.
    fn late(&self, finish: f64) -> f64 {
        match self.deadline_in {
            Some(d) if RISK_FACTOR * finish > d => {
                DEADLINE_WEIGHT * (1.0 + (RISK_FACTOR * finish - d) / self.secs_ref)
            }
            _ => 0.0,
        }
    }

    /// Score of running the task of `e` after waiting `wait_secs` for a slot.
    pub fn score(&self, e: &Estimate, wait_secs: f64) -> f64 {
        let finish = wait_secs + e.secs();
        self.fixed(e) + self.weights.time * finish / self.secs_ref + self.late(finish)
    }

    /// Whether finishing the task of `e` after waiting `wait_secs` would put the deadline at
    /// risk.
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
        let c = self.weights.time / self.secs_ref;
        let on_time = (threshold - a) / c;
        let latest = match self.deadline_in {
            Some(d) if on_time > d / RISK_FACTOR => {
                // Past d / R the score jumps by the penalty and rises faster.
                let slope = c + DEADLINE_WEIGHT * RISK_FACTOR / self.secs_ref;
                let late =
                    (threshold - a - DEADLINE_WEIGHT + DEADLINE_WEIGHT * d / self.secs_ref) / slope;
                late.max(d / RISK_FACTOR)
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
        // wait(k) = render (q + k + 1) / (L + 1) < latest - secs  <=>  k < k_end
        let k_end =
            (latest - e.secs()) * (queue.live_slots.max(0.0) + 1.0) / render - queue.queued - 1.0;
        (k_end.ceil() - from_k).max(0.0)
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
mod tests {
    use super::*;

    fn region(name: &str, price: f64) -> RegionProfile {
        let mut p = RegionProfile::neutral(name.parse().unwrap());
        p.price_per_core_hour = price;
        p
    }

    fn needs(secs: f64, bytes: u64) -> TaskNeeds {
        TaskNeeds {
            core_seconds: secs,
            wall_seconds: secs,
            input_bytes: bytes,
        }
    }

    #[test]
    fn estimates_follow_price_speed_and_transfer() {
        let mut p = region("guian", 0.36);
        p.egress_per_gb = 0.5;
        p.bandwidth_mbps = 800.0;
        p.watts_per_core = 10.0;
        p.pue = 1.2;
        p.carbon_g_per_kwh = 500.0;
        let n = needs(3600.0, 2_000_000_000);
        let cached = Estimate::new(&p, 1.0, &n, Inputs::Held, 1.0);
        assert!((cached.money - 0.36).abs() < 1e-12);
        assert_eq!(cached.transfer_secs, 0.0);
        assert!(
            (cached.carbon_kg - 0.006).abs() < 1e-12,
            "1 core-h x 10 W x 1.2 x 500 g"
        );
        let fast = Estimate::new(&p, 2.0, &n, Inputs::Held, 1.0);
        assert!(
            (fast.money - 0.18).abs() < 1e-12,
            "twice as fast bills half"
        );
        assert_eq!(fast.render_secs, 1800.0);
        let missing = Inputs::Missing {
            link_busy_secs: 0.0,
        };
        let cold = Estimate::new(&p, 1.0, &n, missing, 1.0);
        assert!(
            (cold.money - (0.36 + 1.0)).abs() < 1e-12,
            "2 GB x 0.5 egress"
        );
        let shared = Estimate::new(&p, 1.0, &n, missing, 4.0);
        assert!(
            (shared.money - (0.36 + 0.25)).abs() < 1e-12,
            "paid once for 4 tasks"
        );
        assert_eq!(
            shared.transfer_secs, cold.transfer_secs,
            "but the first waits for all"
        );
        let queued = Inputs::Missing {
            link_busy_secs: 100.0,
        };
        let behind = Estimate::new(&p, 1.0, &n, queued, 1.0);
        assert!(
            (behind.transfer_secs - 120.0).abs() < 1e-9,
            "after the link's backlog"
        );
        let coming = Estimate::new(&p, 1.0, &n, Inputs::Arriving { secs: 7.0 }, 1.0);
        assert_eq!(
            (coming.money, coming.transfer_secs),
            (0.36, 7.0),
            "already paid for"
        );
        assert!(
            (cold.transfer_secs - 20.0).abs() < 1e-9,
            "16 Gbit over 800 Mbit/s"
        );
        assert_eq!(cold.secs(), 3620.0);
        let odd = Estimate::new(&p, f64::NAN, &n, Inputs::Held, 1.0);
        assert_eq!(odd.render_secs, 3600.0, "an unknown speed counts as 1");
    }

    #[test]
    fn each_policy_prefers_its_own_term() {
        let cheap_slow = Estimate {
            money: 1.0,
            carbon_kg: 3.0,
            transfer_secs: 0.0,
            render_secs: 300.0,
            fetches: false,
        };
        let dear_fast = Estimate {
            money: 3.0,
            carbon_kg: 2.0,
            transfer_secs: 0.0,
            render_secs: 100.0,
            fetches: false,
        };
        let green = Estimate {
            money: 2.0,
            carbon_kg: 0.5,
            transfer_secs: 0.0,
            render_secs: 150.0,
            fetches: false,
        };
        let all = [cheap_slow, dear_fast, green];
        let best = |policy| {
            let s = Scorer::new(policy, &all, None);
            let scores: Vec<f64> = all.iter().map(|e| s.score(e, 0.0)).collect();
            (0..3)
                .min_by(|a, b| scores[*a].total_cmp(&scores[*b]))
                .unwrap()
        };
        assert_eq!(best(Policy::Cheapest), 0);
        assert_eq!(best(Policy::Fastest), 1);
        assert_eq!(best(Policy::Greenest), 2);
        // Balanced: money/2 + secs/183.3 -> 0.5+1.64, 1.5+0.55, 1.0+0.82: the green one.
        assert_eq!(best(Policy::Balanced), 2);
    }

    #[test]
    fn deadline_risk_outweighs_everything_else() {
        let cheap_slow = Estimate {
            money: 1.0,
            carbon_kg: 0.0,
            transfer_secs: 0.0,
            render_secs: 1000.0,
            fetches: false,
        };
        let dear_fast = Estimate {
            money: 10.0,
            carbon_kg: 0.0,
            transfer_secs: 0.0,
            render_secs: 100.0,
            fetches: false,
        };
        let all = [cheap_slow, dear_fast];
        let relaxed = Scorer::new(Policy::Cheapest, &all, Some(10_000.0));
        assert!(relaxed.score(&cheap_slow, 0.0) < relaxed.score(&dear_fast, 0.0));
        assert!(!relaxed.at_risk(&cheap_slow, 0.0));
        let tight = Scorer::new(Policy::Cheapest, &all, Some(1000.0));
        assert!(tight.at_risk(&cheap_slow, 0.0), "1.2 x 1000 s > 1000 s");
        assert!(tight.score(&dear_fast, 0.0) < tight.score(&cheap_slow, 0.0));
        // Both late: the less late one wins.
        let past = Scorer::new(Policy::Cheapest, &all, Some(-5.0));
        assert!(past.score(&dear_fast, 0.0) < past.score(&cheap_slow, 0.0));
    }

    #[test]
    fn waiting_counts_match_scoring_one_by_one() {
        let cheap = Estimate {
            money: 1.0,
            carbon_kg: 0.0,
            transfer_secs: 5.0,
            render_secs: 100.0,
            fetches: false,
        };
        let dear = Estimate {
            money: 2.0,
            carbon_kg: 0.0,
            transfer_secs: 0.0,
            render_secs: 100.0,
            fetches: false,
        };
        let queue = WaitModel {
            queued: 2.0,
            live_slots: 7.0,
        };
        for policy in Policy::ALL {
            for deadline in [None, Some(400.0), Some(150.0), Some(90.0)] {
                let s = Scorer::new(policy, &[cheap, dear], deadline);
                let t = s.score(&dear, 0.0);
                for from in [0.0, 3.0] {
                    let closed = s.waiting_below(&cheap, &queue, from, t);
                    let mut k = from;
                    while k < from + 100_000.0
                        && s.score(&cheap, queue.wait_secs(cheap.render_secs, k)) < t
                    {
                        k += 1.0;
                    }
                    assert_eq!(
                        closed,
                        k - from,
                        "{policy} deadline {deadline:?} from {from}"
                    );
                }
            }
        }
        // Balanced waits for a few tasks, cheapest for many, fastest for none.
        let count = |policy| {
            let s = Scorer::new(policy, &[cheap, dear], None);
            s.waiting_below(&cheap, &queue, 0.0, s.score(&dear, 0.0))
        };
        assert_eq!(count(Policy::Fastest), 0.0);
        let (b, c) = (count(Policy::Balanced), count(Policy::Cheapest));
        assert!(b > 0.0 && c > 100.0 * b, "balanced {b}, cheapest {c}");
        let free = Estimate {
            render_secs: 0.0,
            ..cheap
        };
        let s = Scorer::new(Policy::Cheapest, &[free, dear], None);
        assert!(s
            .waiting_below(&free, &queue, 0.0, s.score(&dear, 0.0))
            .is_infinite());
    }

    #[test]
    fn speeds_are_learned_per_region_and_renderer() {
        let mut book = SpeedBook::default();
        let g: Region = "guian".parse().unwrap();
        let u: Region = "ulanqab".parse().unwrap();
        assert_eq!(book.factor(&g, "blender"), 1.0);
        for _ in 0..10 {
            book.record(&g, "blender", 100.0, 50.0);
            book.record(&u, "blender", 100.0, 125.0);
        }
        book.record(&g, "blender", 0.0, 10.0);
        assert!((book.factor(&g, "blender") - 2.0).abs() < 1e-9);
        assert!((book.factor(&u, "blender") - 0.8).abs() < 1e-9);
        assert_eq!(book.factor(&g, "builtin"), 1.0);
        // A change of hardware shows through within the window.
        for _ in 0..200 {
            book.record(&g, "blender", 100.0, 100.0);
        }
        assert!((book.factor(&g, "blender") - 1.0).abs() < 0.01);
        assert_eq!(clamp_speed(1e9), 20.0);
    }
}
