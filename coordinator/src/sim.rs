//! `suanli sim`: a discrete-event simulation of a farm far larger than one machine, driven by
//! the coordinator's own [`dispatch::plan`] and [`crate::placement`] code, so a policy can be
//! judged on paper (makespan, cost, carbon, utilization, data moved) before it runs a film.
//!
//! The model: each region has `workers × slots_per_worker` render slots of `cores_per_slot`
//! cores and a true speed; a task's render takes `task_core_seconds / cores_per_slot / speed`
//! seconds, varied by ±`jitter`. The first task of a job in a region that lacks the job's
//! inputs fetches them over the region's link (one fetch at a time per link; later tasks of
//! the job wait for that fetch, not another). Tasks are released only onto free slots (no
//! prefetch). Like the coordinator, which plans after events and on a half-second timer, the
//! simulation plans once per `tick_s` in which something happened (a slot freed, a job
//! arrived); that keeps a million-task run to about one `plan` per tick. The planner does
//! not know true speeds: it learns them from finished tasks with a [`SpeedBook`], as the
//! coordinator does. Time is kept in integer milliseconds so runs are exactly reproducible.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use suanli_shared::protocol::Policy;
use suanli_shared::regions::{RegionCatalog, RegionProfile};
use suanli_shared::{ContentHash, Region};

use crate::dispatch::{self, JobView, RegionView};
use crate::placement::{SpeedBook, TaskNeeds};

/// Why a scenario was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {message}")]
    Read { path: String, message: String },
    #[error("scenario {origin} is not valid{at}: {message}", at = line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Parse {
        origin: String,
        line: Option<usize>,
        message: String,
    },
    #[error("scenario: {0}")]
    Invalid(String),
    #[error("{0}")]
    Catalog(#[from] suanli_shared::regions::CatalogError),
}

/// A region of the simulated farm: its catalog figures plus its size and true speed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionFile {
    name: Region,
    price_per_core_hour: Option<f64>,
    pue: Option<f64>,
    carbon_g_per_kwh: Option<f64>,
    watts_per_core: Option<f64>,
    egress_per_gb: Option<f64>,
    bandwidth_mbps: Option<f64>,
    workers: u32,
    #[serde(default = "one")]
    slots_per_worker: u32,
    /// True render speed relative to the reference (unknown to the planner at first).
    #[serde(default = "one_f")]
    speed: f64,
    /// Input sets the region already holds when the simulation starts.
    #[serde(default)]
    cached: Vec<String>,
}

fn one() -> u32 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn default_renderer() -> String {
    "blender".into()
}

/// A job of the scenario.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimJob {
    pub name: String,
    #[serde(default)]
    pub priority: i32,
    pub tasks: u32,
    /// Core-seconds of one task at speed 1.
    pub task_core_seconds: f64,
    /// Name of the job's input set; jobs with the same name share cached inputs.
    #[serde(default)]
    pub inputs: Option<String>,
    #[serde(default)]
    pub input_gb: f64,
    #[serde(default)]
    pub submit_at_s: f64,
    /// Seconds after submission by which every frame is wanted.
    #[serde(default)]
    pub deadline_s: Option<f64>,
    #[serde(default)]
    pub regions: Vec<Region>,
    #[serde(default)]
    pub max_slots: Option<u32>,
    /// The job's own policy; otherwise the policy being simulated.
    #[serde(default)]
    pub policy: Option<Policy>,
    #[serde(default = "default_renderer")]
    pub renderer: String,
    /// Submit this job `repeat` times, `every_s` apart (named `NAME-1`, `NAME-2`, …), like a
    /// studio's nightly dailies.
    #[serde(default = "one")]
    pub repeat: u32,
    #[serde(default)]
    pub every_s: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_currency")]
    currency: String,
    #[serde(default = "default_cores")]
    cores_per_slot: f64,
    #[serde(default)]
    jitter: f64,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default = "default_tick")]
    tick_s: f64,
    region: Vec<RegionFile>,
    job: Vec<SimJob>,
}

fn default_currency() -> String {
    "CNY".into()
}
fn default_cores() -> f64 {
    8.0
}
fn default_seed() -> u64 {
    1
}
fn default_tick() -> f64 {
    0.5
}

/// A region of a checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRegion {
    pub profile: RegionProfile,
    pub slots: u32,
    pub speed: f64,
    pub cached: Vec<String>,
}

/// A checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub currency: String,
    pub cores_per_slot: f64,
    pub jitter: f64,
    pub seed: u64,
    /// Planning interval, milliseconds.
    pub tick_ms: u64,
    pub regions: Vec<SimRegion>,
    pub jobs: Vec<SimJob>,
}

/// Most tasks one scenario may hold, so a typo cannot exhaust memory.
const MAX_TASKS: u64 = 50_000_000;

impl Scenario {
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_string(),
            line: suanli_shared::regions::toml_error_line(text, &e),
            message: e.message().trim().to_string(),
        })?;
        let invalid = |m: String| Err(ScenarioError::Invalid(m));
        if !(file.cores_per_slot > 0.0 && file.cores_per_slot.is_finite()) {
            return invalid("cores_per_slot must be above 0".into());
        }
        if !(0.001..=3600.0).contains(&file.tick_s) {
            return invalid(format!(
                "tick_s {} must be 0.001 to 3600 seconds",
                file.tick_s
            ));
        }
        if !(0.0..1.0).contains(&file.jitter) {
            return invalid(format!(
                "jitter {} must be in 0 to 1 (exclusive)",
                file.jitter
            ));
        }
        let mut regions = Vec::new();
        for r in file.region {
            let mut p = RegionProfile::neutral(r.name.clone());
            p.price_per_core_hour = r.price_per_core_hour.unwrap_or(p.price_per_core_hour);
            p.pue = r.pue.unwrap_or(p.pue);
            p.carbon_g_per_kwh = r.carbon_g_per_kwh.unwrap_or(p.carbon_g_per_kwh);
            p.watts_per_core = r.watts_per_core.unwrap_or(p.watts_per_core);
            p.egress_per_gb = r.egress_per_gb.unwrap_or(p.egress_per_gb);
            p.bandwidth_mbps = r.bandwidth_mbps.unwrap_or(p.bandwidth_mbps);
            if !(r.speed > 0.0 && r.speed.is_finite()) {
                return invalid(format!("region '{}': speed must be above 0", r.name));
            }
            let slots = u64::from(r.workers) * u64::from(r.slots_per_worker);
            if slots == 0 || slots > 10_000_000 {
                return invalid(format!(
                    "region '{}': workers x slots_per_worker must be 1 to 10,000,000",
                    r.name
                ));
            }
            regions.push(SimRegion {
                profile: p,
                slots: slots as u32,
                speed: r.speed,
                cached: r.cached,
            });
        }
        // The catalog's checks: figures in range, unique names.
        RegionCatalog::new(
            file.currency.clone(),
            Policy::default(),
            regions.iter().map(|r| r.profile.clone()),
        )?;
        let mut jobs = Vec::new();
        for j in file.job {
            if j.repeat == 0 || j.repeat > 100_000 || !(j.every_s >= 0.0 && j.every_s.is_finite()) {
                return invalid(format!(
                    "job '{}': repeat must be 1 to 100,000 and every_s not negative",
                    j.name
                ));
            }
            if j.repeat == 1 {
                jobs.push(j);
                continue;
            }
            for n in 0..j.repeat {
                let mut copy = j.clone();
                copy.name = format!("{}-{}", j.name, n + 1);
                copy.submit_at_s = j.submit_at_s + f64::from(n) * j.every_s;
                copy.repeat = 1;
                jobs.push(copy);
            }
        }
        if jobs.is_empty() {
            return invalid("no [[job]] tables".into());
        }
        let mut total = 0u64;
        for j in &jobs {
            let bad = |what: &str| invalid(format!("job '{}': {what}", j.name));
            if j.tasks == 0 {
                return bad("tasks must be at least 1");
            }
            if !(j.task_core_seconds > 0.0 && j.task_core_seconds.is_finite()) {
                return bad("task_core_seconds must be above 0");
            }
            if !(j.input_gb >= 0.0 && j.input_gb.is_finite()) {
                return bad("input_gb cannot be negative");
            }
            if !(j.submit_at_s >= 0.0 && j.submit_at_s.is_finite()) {
                return bad("submit_at_s cannot be negative");
            }
            if j.deadline_s.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
                return bad("deadline_s must be above 0");
            }
            if j.max_slots == Some(0) {
                return bad("max_slots must be at least 1");
            }
            if let Some(r) = j
                .regions
                .iter()
                .find(|r| !regions.iter().any(|x| &x.profile.name == *r))
            {
                return bad(&format!("region '{r}' is not in the scenario"));
            }
            total += u64::from(j.tasks);
        }
        if total > MAX_TASKS {
            return invalid(format!("{total} tasks in all; at most {MAX_TASKS}"));
        }
        Ok(Self {
            name: file.name,
            description: file.description,
            currency: file.currency,
            cores_per_slot: file.cores_per_slot,
            jitter: file.jitter,
            seed: file.seed,
            tick_ms: secs_to_ms(file.tick_s).max(1),
            regions,
            jobs,
        })
    }

    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }
}

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
    /// Mean of each job's time from submission to its last frame.
    pub mean_turnaround_s: f64,
    pub tasks_done: u64,
    pub tasks_total: u64,
    pub regions: Vec<RegionReport>,
    pub jobs: Vec<JobReport>,
    /// Events processed and `plan` calls made (a measure of the simulation's own work).
    pub events: u64,
    pub plan_calls: u64,
}

/// splitmix64: small, fast and reproducible.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An event: (time ms, sequence, region or `ARRIVAL`, job, render ms).
type Event = Reverse<(u64, u64, u32, u32, u64)>;
const ARRIVAL: u32 = u32::MAX;

fn secs_to_ms(s: f64) -> u64 {
    (s * 1000.0).round().max(0.0) as u64
}

struct RegionState {
    report: RegionReport,
    speed: f64,
    render_ms: u64,
    link_free_ms: u64,
    /// Input set -> when its fetch into the region completes.
    fetched: BTreeMap<ContentHash, u64>,
}

/// Simulates `scenario` with `policy` for every job that names none.
pub fn run_scenario(scenario: &Scenario, policy: Policy) -> SimReport {
    let inputs_of = |j: &SimJob| {
        let name = j.inputs.as_deref().unwrap_or(&j.name);
        ContentHash::of(format!("suanli-sim-inputs/{name}").as_bytes())
    };
    let mut regions: Vec<RegionView> = Vec::new();
    let mut states: Vec<RegionState> = Vec::new();
    for r in &scenario.regions {
        let mut view = RegionView::new(r.profile.clone(), i64::from(r.slots), r.slots);
        let mut fetched = BTreeMap::new();
        for name in &r.cached {
            let h = ContentHash::of(format!("suanli-sim-inputs/{name}").as_bytes());
            view.cached.insert(h);
            fetched.insert(h, 0);
        }
        regions.push(view);
        states.push(RegionState {
            report: RegionReport {
                name: r.profile.name.to_string(),
                slots: r.slots,
                tasks: 0,
                core_hours: 0.0,
                cost: 0.0,
                energy_kwh: 0.0,
                carbon_kg: 0.0,
                gb_in: 0.0,
                utilization: 0.0,
            },
            speed: r.speed,
            render_ms: 0,
            link_free_ms: 0,
            fetched,
        });
    }
    let mut jobs: Vec<JobView> = Vec::new();
    let mut reports: Vec<JobReport> = Vec::new();
    let mut heap: BinaryHeap<Event> = BinaryHeap::new();
    let mut seq = 0u64;
    for (i, j) in scenario.jobs.iter().enumerate() {
        let submit_ms = secs_to_ms(j.submit_at_s);
        let mut view = JobView::new(j.priority, submit_ms, 0, j.regions.clone(), Vec::new());
        view.policy = j.policy.unwrap_or(policy);
        view.deadline_ms = j.deadline_s.map(|d| submit_ms + secs_to_ms(d));
        view.max_slots = j.max_slots;
        view.renderer = j.renderer.clone();
        view.inputs = Some(inputs_of(j));
        view.needs = TaskNeeds {
            core_seconds: j.task_core_seconds,
            wall_seconds: j.task_core_seconds / scenario.cores_per_slot,
            input_bytes: (j.input_gb * 1e9) as u64,
        };
        jobs.push(view);
        reports.push(JobReport {
            name: j.name.clone(),
            tasks: j.tasks,
            done: 0,
            submitted_s: j.submit_at_s,
            finished_s: None,
            due_s: j.deadline_s.map(|d| j.submit_at_s + d),
            met_deadline: None,
            cost: 0.0,
        });
        heap.push(Reverse((submit_ms, seq, ARRIVAL, i as u32, 0)));
        seq += 1;
    }
    let mut rng = Rng(scenario.seed);
    let mut book = SpeedBook::default();
    let (mut events, mut plan_calls, mut makespan_ms) = (0u64, 0u64, 0u64);
    let tick = scenario.tick_ms;
    while let Some(Reverse((first, ..))) = heap.peek().copied() {
        // Every event until the end of this tick, then one round of planning.
        let now = first.div_ceil(tick) * tick;
        while let Some(&Reverse((t, _, region, job, render_ms))) = heap.peek() {
            if t > now {
                break;
            }
            heap.pop();
            events += 1;
            let (ri, ji) = (region as usize, job as usize);
            if region == ARRIVAL {
                jobs[ji].ready = (0..scenario.jobs[ji].tasks).collect();
                continue;
            }
            let render_s = render_ms as f64 / 1000.0;
            let core_s = render_s * scenario.cores_per_slot;
            let st = &mut states[ri];
            let p = &regions[ri].profile;
            let cost = p.compute_cost(core_s);
            st.render_ms += render_ms;
            st.report.tasks += 1;
            st.report.core_hours += core_s / 3600.0;
            st.report.cost += cost;
            st.report.energy_kwh += p.energy_kwh(core_s);
            st.report.carbon_kg += p.carbon_kg(core_s);
            let view = &mut jobs[ji];
            view.in_flight -= 1;
            book.record(&p.name, &view.renderer, view.needs.wall_seconds, render_s);
            let learned = book.factor(&p.name, &view.renderer);
            regions[ri].free += 1;
            match regions[ri].speed.get_mut(&view.renderer) {
                Some(v) => *v = learned,
                None => {
                    regions[ri].speed.insert(view.renderer.clone(), learned);
                }
            }
            let rep = &mut reports[ji];
            rep.done += 1;
            rep.cost += cost;
            if rep.done == rep.tasks {
                rep.finished_s = Some(t as f64 / 1000.0);
            }
            makespan_ms = makespan_ms.max(t);
        }
        // What the planner knows of transfers: inputs held, inputs on their way, busy links.
        for (view, st) in regions.iter_mut().zip(&states) {
            view.link_busy_secs = st.link_free_ms.saturating_sub(now) as f64 / 1000.0;
            view.arriving.clear();
            for (h, at) in &st.fetched {
                if *at > now {
                    view.arriving.insert(*h, (*at - now) as f64 / 1000.0);
                } else if !view.cached.contains(h) {
                    view.cached.insert(*h);
                }
            }
        }
        plan_calls += 1;
        for release in dispatch::plan(&mut jobs, &mut regions, now) {
            let ri = regions
                .iter()
                .position(|r| r.name() == &release.region)
                .expect("plan releases onto known regions");
            let (job, st) = (&jobs[release.job], &mut states[ri]);
            let p = &regions[ri].profile;
            let bytes = job.needs.input_bytes;
            let inputs_at = match job.inputs {
                Some(h) if bytes > 0 => *st.fetched.entry(h).or_insert_with(|| {
                    let start = st.link_free_ms.max(now);
                    let end = start + secs_to_ms(p.transfer_secs(bytes));
                    st.link_free_ms = end;
                    st.report.gb_in += bytes as f64 / 1e9;
                    st.report.cost += p.transfer_cost(bytes);
                    reports[release.job].cost += p.transfer_cost(bytes);
                    end
                }),
                _ => now,
            };
            let jitter = 1.0 + scenario.jitter * (2.0 * rng.next_f64() - 1.0);
            let render_ms = secs_to_ms(job.needs.wall_seconds / st.speed * jitter).max(1);
            let end = inputs_at.max(now) + render_ms;
            heap.push(Reverse((
                end,
                seq,
                ri as u32,
                release.job as u32,
                render_ms,
            )));
            seq += 1;
        }
    }
    let makespan_s = makespan_ms as f64 / 1000.0;
    let mut out = SimReport {
        scenario: scenario.name.clone(),
        policy,
        currency: scenario.currency.clone(),
        makespan_s,
        cost: 0.0,
        energy_kwh: 0.0,
        carbon_kg: 0.0,
        gb_moved: 0.0,
        mean_turnaround_s: 0.0,
        tasks_done: 0,
        tasks_total: scenario.jobs.iter().map(|j| u64::from(j.tasks)).sum(),
        regions: Vec::new(),
        jobs: Vec::new(),
        events,
        plan_calls,
    };
    for mut st in states {
        st.report.utilization = if makespan_ms == 0 {
            0.0
        } else {
            st.render_ms as f64 / (f64::from(st.report.slots) * makespan_ms as f64)
        };
        out.cost += st.report.cost;
        out.energy_kwh += st.report.energy_kwh;
        out.carbon_kg += st.report.carbon_kg;
        out.gb_moved += st.report.gb_in;
        out.tasks_done += st.report.tasks;
        out.regions.push(st.report);
    }
    let mut turnaround = 0.0;
    for mut rep in reports {
        rep.met_deadline = rep
            .due_s
            .map(|due| rep.finished_s.is_some_and(|f| f <= due + 1e-9));
        turnaround += rep.finished_s.unwrap_or(makespan_s) - rep.submitted_s;
        out.jobs.push(rep);
    }
    out.mean_turnaround_s = turnaround / out.jobs.len().max(1) as f64;
    out
}

/// "36.2 h", "14.0 min", "52 s".
pub fn fmt_duration(secs: f64) -> String {
    if secs >= 3600.0 {
        format!("{:.1} h", secs / 3600.0)
    } else if secs >= 60.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{secs:.0} s")
    }
}

/// Thousands separators for large figures: 1234567.8 -> "1,234,568".
fn grouped(x: f64) -> String {
    let n = x.round() as i64;
    let digits: Vec<char> = n.unsigned_abs().to_string().chars().rev().collect();
    let groups: Vec<String> = digits
        .chunks(3)
        .map(|g| g.iter().rev().collect())
        .rev()
        .collect();
    let out = groups.join(",");
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} / {}: makespan {} (mean job {}), cost {} {}, energy {} kWh, carbon {} kg CO2, {} GB moved, {}/{} tasks",
            self.scenario,
            self.policy,
            fmt_duration(self.makespan_s),
            fmt_duration(self.mean_turnaround_s),
            grouped(self.cost),
            self.currency,
            grouped(self.energy_kwh),
            grouped(self.carbon_kg),
            grouped(self.gb_moved),
            self.tasks_done,
            self.tasks_total
        )?;
        writeln!(
            f,
            "  {:<12} {:>7} {:>9} {:>11} {:>12} {:>10} {:>8} {:>6}",
            "region", "slots", "tasks", "core-h", "cost", "kg CO2", "GB in", "util"
        )?;
        for r in &self.regions {
            writeln!(
                f,
                "  {:<12} {:>7} {:>9} {:>11} {:>12} {:>10} {:>8.0} {:>5.0}%",
                r.name,
                r.slots,
                r.tasks,
                grouped(r.core_hours),
                grouped(r.cost),
                grouped(r.carbon_kg),
                r.gb_in,
                r.utilization * 100.0
            )?;
        }
        for j in &self.jobs {
            let finished = j
                .finished_s
                .map(|s| format!("done at {}", fmt_duration(s)))
                .unwrap_or_else(|| format!("{}/{} done", j.done, j.tasks));
            let deadline = match (j.due_s, j.met_deadline) {
                (Some(d), Some(true)) => format!(" (due {}: met)", fmt_duration(d)),
                (Some(d), _) => format!(" (due {}: MISSED)", fmt_duration(d)),
                _ => String::new(),
            };
            writeln!(
                f,
                "  job {:<12} {:>9} tasks, in at {}, {}{}, cost {} {}",
                j.name,
                j.tasks,
                fmt_duration(j.submitted_s),
                finished,
                deadline,
                grouped(j.cost),
                self.currency
            )?;
        }
        Ok(())
    }
}

/// A Markdown table comparing policies on one scenario: one row per report.
pub fn comparison_table(reports: &[SimReport]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let mut out = String::new();
    let mut header = format!(
        "| policy | makespan | mean job time | cost ({}) | carbon (kg CO2) | GB moved | deadlines met |",
        first.currency
    );
    let mut rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: |".to_string();
    for r in &first.regions {
        header.push_str(&format!(" util {} |", r.name));
        rule.push_str(" ---: |");
    }
    out.push_str(&header);
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for rep in reports {
        let with_deadline = rep.jobs.iter().filter(|j| j.due_s.is_some()).count();
        let met = rep
            .jobs
            .iter()
            .filter(|j| j.met_deadline == Some(true))
            .count();
        let deadlines = if with_deadline == 0 {
            "-".to_string()
        } else {
            format!("{met}/{with_deadline}")
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            rep.policy,
            fmt_duration(rep.makespan_s),
            fmt_duration(rep.mean_turnaround_s),
            grouped(rep.cost),
            grouped(rep.carbon_kg),
            grouped(rep.gb_moved),
            deadlines
        ));
        for r in &rep.regions {
            out.push_str(&format!(" {:.0}% |", r.utilization * 100.0));
        }
        out.push('\n');
    }
    out
}

/// The policies `suanli sim --policy` names: one, or `all`.
pub fn policies_from_arg(arg: &str) -> Result<Vec<Policy>, ScenarioError> {
    if arg.trim() == "all" {
        return Ok(Policy::ALL.to_vec());
    }
    arg.parse::<Policy>()
        .map(|p| vec![p])
        .map_err(|e| ScenarioError::Invalid(format!("{e} or all")))
}

/// `suanli sim SCENARIO [--policy P|all] [--json]`: runs the scenario once per policy and
/// renders the reports (text with a comparison table, or a JSON array).
pub fn run_cli(path: &Path, policy: &str, json: bool) -> Result<String, ScenarioError> {
    let policies = policies_from_arg(policy)?;
    let scenario = Scenario::load(path)?;
    let mut reports = Vec::new();
    let mut text = String::new();
    if !scenario.description.is_empty() {
        text.push_str(&format!(
            "{}: {}\n\n",
            scenario.name,
            scenario.description.trim()
        ));
    }
    for p in policies {
        let started = std::time::Instant::now();
        let report = run_scenario(&scenario, p);
        text.push_str(&format!(
            "{report}  ({} events, {} plans, simulated in {:.2} s)\n\n",
            report.events,
            report.plan_calls,
            started.elapsed().as_secs_f64()
        ));
        reports.push(report);
    }
    if json {
        return Ok(serde_json::to_string_pretty(&reports).unwrap_or_default() + "\n");
    }
    text.push_str(&comparison_table(&reports));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two regions: a cheap, green, slower one far away, a dear, fast one near the studio.
    const SMALL: &str = r#"
name = "small"
cores_per_slot = 4
jitter = 0.1
seed = 7

[[region]]
name = "guian"
price_per_core_hour = 0.06
pue = 1.12
carbon_g_per_kwh = 300.0
watts_per_core = 8.0
egress_per_gb = 0.4
bandwidth_mbps = 1000.0
workers = 20
speed = 0.8

[[region]]
name = "shenzhen"
price_per_core_hour = 0.20
pue = 1.47
carbon_g_per_kwh = 650.0
watts_per_core = 10.0
bandwidth_mbps = 10000.0
workers = 20
speed = 1.2
cached = ["shot"]

[[job]]
name = "shot"
tasks = 400
task_core_seconds = 1200.0
input_gb = 20.0
"#;

    fn small() -> Scenario {
        Scenario::from_toml(SMALL, "inline").unwrap()
    }

    #[test]
    fn every_policy_renders_every_task() {
        let s = small();
        for policy in Policy::ALL {
            let r = run_scenario(&s, policy);
            assert_eq!(r.tasks_done, 400, "{policy}");
            assert_eq!(r.jobs[0].done, 400);
            assert!(r.makespan_s > 0.0 && r.cost > 0.0 && r.carbon_kg > 0.0);
            assert!(r.regions.iter().all(|x| x.utilization <= 1.0 + 1e-9));
            let region_cost: f64 = r.regions.iter().map(|x| x.cost).sum();
            assert!((region_cost - r.jobs[0].cost).abs() < 1e-6);
        }
    }

    #[test]
    fn policies_trade_money_time_and_carbon() {
        let s = small();
        let run = |p| run_scenario(&s, p);
        let (cheap, fast, green, bal) = (
            run(Policy::Cheapest),
            run(Policy::Fastest),
            run(Policy::Greenest),
            run(Policy::Balanced),
        );
        assert!(cheap.cost < fast.cost, "{} vs {}", cheap.cost, fast.cost);
        assert!(fast.makespan_s <= cheap.makespan_s);
        assert!(green.carbon_kg < fast.carbon_kg);
        assert!(bal.cost <= fast.cost && bal.makespan_s <= cheap.makespan_s);
        // Cheapest keeps to the cheap region: the dear one renders nothing.
        assert_eq!(cheap.regions[1].tasks, 0, "{cheap}");
        // Guian lacked the inputs: whoever used it moved them exactly once.
        for r in [&cheap, &fast, &green, &bal] {
            let moved = r.regions[0].gb_in;
            assert!(moved == 0.0 || (moved - 20.0).abs() < 1e-9, "{moved}");
            assert_eq!(r.regions[1].gb_in, 0.0, "shenzhen had the inputs");
        }
    }

    #[test]
    fn deadlines_make_cheapest_spend() {
        let relaxed = run_scenario(&small(), Policy::Cheapest);
        let fastest = run_scenario(&small(), Policy::Fastest);
        let mut s = small();
        // Between what the cheap region alone and the whole farm take.
        let deadline = (relaxed.makespan_s + fastest.makespan_s) / 2.0;
        s.jobs[0].deadline_s = Some(deadline);
        assert_eq!(relaxed.regions[0].tasks, 400, "{relaxed}");
        let tight = run_scenario(&s, Policy::Cheapest);
        assert!(tight.regions[1].tasks > 0, "{tight}");
        assert!(tight.makespan_s < relaxed.makespan_s);
        assert_eq!(tight.jobs[0].met_deadline, Some(true), "{tight}");
        assert!(tight.cost > relaxed.cost);
    }

    #[test]
    fn priorities_and_caps_hold_in_the_simulation() {
        let mut s = small();
        s.jobs[0].tasks = 200;
        let mut urgent = s.jobs[0].clone();
        urgent.name = "urgent".into();
        urgent.priority = 5;
        urgent.submit_at_s = 600.0;
        let mut capped = s.jobs[0].clone();
        capped.name = "capped".into();
        capped.max_slots = Some(4);
        s.jobs.push(urgent);
        s.jobs.push(capped);
        let r = run_scenario(&s, Policy::Fastest);
        assert_eq!(r.tasks_done, 600);
        let end = |name: &str| {
            r.jobs
                .iter()
                .find(|j| j.name == name)
                .and_then(|j| j.finished_s)
                .unwrap()
        };
        assert!(end("urgent") < end("shot"), "{r}");
        // Four slots at a time: at least 200 / 4 rounds of a task (>= 250 s each).
        assert!(end("capped") >= 50.0 * 250.0, "{r}");
    }

    #[test]
    fn runs_are_reproducible_and_scenarios_checked() {
        let s = small();
        assert_eq!(
            run_scenario(&s, Policy::Balanced),
            run_scenario(&s, Policy::Balanced)
        );
        let bad = |text: &str| Scenario::from_toml(text, "t").unwrap_err().to_string();
        assert!(bad(&SMALL.replace("pue = 1.12", "pue = 0.5")).contains("pue"));
        assert!(bad(&SMALL.replace("tasks = 400", "tasks = 0")).contains("tasks"));
        assert!(
            bad(&SMALL.replace("workers = 20\nspeed = 0.8", "workers = 0")).contains("workers")
        );
        assert!(
            bad(&SMALL.replace("input_gb = 20.0", "regions = [\"mars\"]"))
                .contains("'mars' is not in the scenario")
        );
        assert!(bad(&SMALL.replace("seed = 7", "seed = 7\nsed = 1")).contains("line 6"));
    }

    #[test]
    fn the_report_prints_as_tables() {
        let s = small();
        let reports: Vec<SimReport> = Policy::ALL
            .into_iter()
            .map(|p| run_scenario(&s, p))
            .collect();
        let text = reports[0].to_string();
        assert!(text.contains("small / balanced: makespan"), "{text}");
        assert!(text.contains("guian") && text.contains("shenzhen"));
        let table = comparison_table(&reports);
        assert_eq!(table.lines().count(), 2 + 4);
        let mut s = small();
        s.jobs[0].repeat = 3;
        s.jobs[0].every_s = 600.0;
        let text = SMALL.replace(
            "input_gb = 20.0",
            "input_gb = 20.0\nrepeat = 3\nevery_s = 600.0",
        );
        let s = Scenario::from_toml(&text, "t").unwrap();
        let names: Vec<(&str, f64)> = s
            .jobs
            .iter()
            .map(|j| (j.name.as_str(), j.submit_at_s))
            .collect();
        assert_eq!(
            names,
            [("shot-1", 0.0), ("shot-2", 600.0), ("shot-3", 1200.0)]
        );
        let r = run_scenario(&s, Policy::Fastest);
        assert_eq!(r.tasks_done, 1200);
        assert!(r.mean_turnaround_s > 0.0 && r.mean_turnaround_s < r.makespan_s);
        assert!(table.contains("| cheapest |") && table.contains("util guian"));
        assert_eq!(grouped(1234567.8), "1,234,568");
        assert_eq!(policies_from_arg("all").unwrap().len(), 4);
        assert_eq!(policies_from_arg("greenest").unwrap(), [Policy::Greenest]);
        assert!(policies_from_arg("green").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, SMALL).unwrap();
        let out = run_cli(&path, "cheapest", false).unwrap();
        assert!(
            out.contains("small / cheapest") && out.contains("| cheapest |"),
            "{out}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&run_cli(&path, "all", true).unwrap()).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 4);
        assert_eq!(json[1]["policy"], "cheapest");
        assert!(run_cli(&dir.path().join("nope.toml"), "all", false).is_err());
        assert_eq!(fmt_duration(5400.0), "1.5 h");
    }
}
