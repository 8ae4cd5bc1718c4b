//! Scenario files: the TOML a planner writes (regions with their size and true speed, jobs
//! with their work, inputs, deadlines and repeats), read and checked into a [`Scenario`] once,
//! so the event loop never meets a bad figure.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use suanli_shared::protocol::Policy;
use suanli_shared::regions::{RegionCatalog, RegionProfile};
use suanli_shared::studios::{StudioCatalog, StudioTerms};
use suanli_shared::{Region, Studio};

use super::secs_to_ms;
use crate::placement::{Terms, DEFAULT_PATIENCE, DEFAULT_VALUE_OF_HOUR};

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
    #[error("{0}")]
    Studios(#[from] suanli_shared::studios::StudiosError),
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
    price_per_gpu_hour: Option<f64>,
    watts_per_gpu: Option<f64>,
    /// GPUs in the whole region (its workers' together); GPU jobs run only where there are.
    #[serde(default)]
    gpus: u32,
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
    /// The studio that submits it (`default` when missing).
    #[serde(default)]
    pub studio: Studio,
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
    /// The job's patience (`cheapest`, `greenest`); otherwise the scenario's.
    #[serde(default)]
    pub patience: Option<f64>,
    /// What an hour of the job's delay is worth (`balanced`); otherwise the scenario's, scaled
    /// by priority.
    #[serde(default)]
    pub value_of_hour: Option<f64>,
    #[serde(default = "default_renderer")]
    pub renderer: String,
    /// Submit this job `repeat` times, `every_s` apart (named `NAME-1`, `NAME-2`, …), like a
    /// studio's nightly dailies.
    #[serde(default = "one")]
    pub repeat: u32,
    #[serde(default)]
    pub every_s: f64,
    /// GPUs each task holds (0: a CPU job); its tasks run only in regions with GPUs.
    #[serde(default)]
    pub gpus: u32,
    /// Licence seats each task holds while it runs, from the scenario's `[licenses]`.
    #[serde(default)]
    pub licenses: BTreeMap<String, u32>,
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
    #[serde(default = "default_patience")]
    patience: f64,
    #[serde(default = "default_value_of_hour")]
    value_of_hour: f64,
    #[serde(default)]
    carbon_price_per_tonne: f64,
    region: Vec<RegionFile>,
    /// Studios' contracts, as in a studio catalog (weights, quotas, regions, budgets). A
    /// scenario is one budget period: `budget_per_month` is the budget of the whole run.
    #[serde(default)]
    studio: Vec<StudioTerms>,
    /// Farm-wide licence pools, as in a region catalog.
    #[serde(default)]
    licenses: BTreeMap<String, u32>,
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
fn default_patience() -> f64 {
    DEFAULT_PATIENCE
}
fn default_value_of_hour() -> f64 {
    DEFAULT_VALUE_OF_HOUR
}

/// A region of a checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRegion {
    pub profile: RegionProfile,
    pub slots: u32,
    /// GPUs in the region, all workers together.
    pub gpus: u32,
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
    /// The farm's placement terms, as a region catalog gives them: patience, value of an hour
    /// at priority 0 and carbon price.
    pub terms: Terms,
    pub regions: Vec<SimRegion>,
    /// The studios' contracts; studios it does not name get open terms.
    pub studios: StudioCatalog,
    /// Licence pools: seats per name.
    pub licenses: BTreeMap<String, u32>,
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
        let terms = Terms {
            patience: file.patience,
            value_of_hour: file.value_of_hour,
            carbon_per_tonne: file.carbon_price_per_tonne,
        };
        let mut regions = Vec::new();
        for r in file.region {
            let mut p = RegionProfile::neutral(r.name.clone());
            p.price_per_core_hour = r.price_per_core_hour.unwrap_or(p.price_per_core_hour);
            p.pue = r.pue.unwrap_or(p.pue);
            p.carbon_g_per_kwh = r.carbon_g_per_kwh.unwrap_or(p.carbon_g_per_kwh);
            p.watts_per_core = r.watts_per_core.unwrap_or(p.watts_per_core);
            p.egress_per_gb = r.egress_per_gb.unwrap_or(p.egress_per_gb);
            p.bandwidth_mbps = r.bandwidth_mbps.unwrap_or(p.bandwidth_mbps);
            p.price_per_gpu_hour = r.price_per_gpu_hour.unwrap_or(p.price_per_gpu_hour);
            p.watts_per_gpu = r.watts_per_gpu.unwrap_or(p.watts_per_gpu);
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
                gpus: r.gpus,
                speed: r.speed,
                cached: r.cached,
            });
        }
        // The catalog's checks (figures in range, unique names), then the placement terms.
        RegionCatalog::new(
            file.currency.clone(),
            Policy::default(),
            regions.iter().map(|r| r.profile.clone()),
        )?;
        terms.check().map_err(ScenarioError::Invalid)?;
        let mut pools = RegionCatalog::default();
        pools.set_licenses(file.licenses)?;
        let studios = StudioCatalog::new(file.studio)?;
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
            let job_terms = Terms {
                patience: j.patience.unwrap_or(terms.patience),
                value_of_hour: j.value_of_hour.unwrap_or(terms.value_of_hour),
                ..terms
            };
            if let Err(e) = job_terms.check() {
                return bad(&e);
            }
            if let Some(r) = j
                .regions
                .iter()
                .find(|r| !regions.iter().any(|x| &x.profile.name == *r))
            {
                return bad(&format!("region '{r}' is not in the scenario"));
            }
            let contract = studios.terms(&j.studio);
            if let Some(r) = j.regions.iter().find(|r| !contract.allows(r)) {
                return bad(&format!(
                    "studio '{}' may not send data to region '{r}'",
                    j.studio
                ));
            }
            if contract.max_priority.is_some_and(|c| j.priority > c) {
                return bad(&format!(
                    "priority {} is above studio '{}''s ceiling",
                    j.priority, j.studio
                ));
            }
            if j.gpus > 0
                && !regions.iter().any(|r| {
                    r.gpus >= j.gpus
                        && (j.regions.is_empty() || j.regions.contains(&r.profile.name))
                })
            {
                return bad(&format!(
                    "its tasks need {} GPUs each and no region it may use has that many",
                    j.gpus
                ));
            }
            for (pool, seats) in &j.licenses {
                match pools.licenses.get(pool) {
                    None => return bad(&format!("licence pool '{pool}' is not in [licenses]")),
                    Some(n) if seats > n || *seats == 0 => {
                        return bad(&format!(
                            "licenses.{pool} = {seats}: give 1 to the pool's {n} seats"
                        ))
                    }
                    Some(_) => {}
                }
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
            terms,
            regions,
            studios,
            licenses: pools.licenses,
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
